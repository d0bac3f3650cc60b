-- wrk script: a streamed (SSE) chat completion for the model "bench-sse".
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"
wrk.body = '{"model":"bench-sse","stream":true,' ..
           '"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
