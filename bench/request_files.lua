-- wrk's request script: POSTs files as request bodies, cycling through them, with the content type given first
-- (bench/wrk.py: the example JPEGs as raw bodies, or request files made from them for the peers' protocols).
--   wrk -s bench/request_files.lua http://127.0.0.1:PORT/service -- application/octet-stream a.jpeg b.jpeg …
-- Each wrk thread reads the files once (init); a request is then a table lookup, so wrk costs little CPU.
local bodies = {}
local next_body = 0

function init(args)
  local content_type = args[1]
  for i = 2, #args do
    local file = assert(io.open(args[i], "rb"))
    bodies[i - 1] = wrk.format("POST", nil, {["Content-Type"] = content_type}, file:read("*a"))
    file:close()
  end
end

function request()
  next_body = next_body % #bodies + 1
  return bodies[next_body]
end
