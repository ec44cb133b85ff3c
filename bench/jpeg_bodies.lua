-- wrk's request script: POSTs real JPEG files as raw bodies, cycling through them.
--   wrk -s bench/jpeg_bodies.lua http://127.0.0.1:PORT/service -- a.jpeg b.jpeg …
-- Each wrk thread reads the files once (init); a request is then a table lookup, so wrk costs little CPU.
local bodies = {}
local next_body = 0

function init(args)
  for i, path in ipairs(args) do
    local file = assert(io.open(path, "rb"))
    bodies[i] = wrk.format("POST", nil, {["Content-Type"] = "application/octet-stream"}, file:read("*a"))
    file:close()
  end
end

function request()
  next_body = next_body % #bodies + 1
  return bodies[next_body]
end
