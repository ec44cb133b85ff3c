-- wrk's request script for the Open Inference (KServe v2) REST protocol: POSTs ready JSON request bodies (files
-- that bench/wrk.py's v2_requests wrote: each a real JPEG, base64 in one BYTES element of the input "image"),
-- cycling through them, as jpeg_bodies.lua does for raw JPEGs.
--   wrk -s bench/v2_bodies.lua http://127.0.0.1:PORT/v2/models/NAME/infer -- a.json b.json …
local bodies = {}
local next_body = 0

function init(args)
  for i, path in ipairs(args) do
    local file = assert(io.open(path, "rb"))
    bodies[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, file:read("*a"))
    file:close()
  end
end

function request()
  next_body = next_body % #bodies + 1
  return bodies[next_body]
end
