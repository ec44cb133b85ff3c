-- wrk's request script for ready request bodies: POSTs the files bench/wrk.py wrote (v2_requests: Open Inference
-- JSON; multipart_requests: a form with the JPEG as a file), cycling through them, with the content type given
-- first, as jpeg_bodies.lua does for raw JPEGs.
--   wrk -s bench/request_files.lua http://127.0.0.1:PORT/PATH -- 'application/json' a.json b.json …
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
