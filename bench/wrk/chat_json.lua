-- wrk script: a non-streamed chat completion for the model "bench-json".
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench-json","messages":[{"role":"user","content":"Say hello."}],' ..
           '"max_tokens":16}'
