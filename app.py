"""One server for the classifier: the Gradio page at /, POST /service and /explain, /v2 and /v1, gRPC, MCP. Run:
python app.py (or, installed, `classifier serve`): the same command, classifier/serving/command.py. Importing this
loads nothing and binds nothing: its names (build, main, parse_args, …) are the command's, imported when used."""
import os
import sys


def __getattr__(name: str):
    from classifier.serving import command

    return getattr(command, name)


if __name__ == "__main__":
    from classifier.serving.command import main

    main()
elif os.environ.get("GRADIO_WATCH_MODULE_NAME"):  # `gradio app.py`, Gradio's reload mode, imports this for `demo`
    from classifier.serving.command import build

    demo = build(sys.argv[1:], strict=False).demo  # the command line is Gradio's: ours are the flags it knows
