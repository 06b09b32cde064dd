-- bench/predict.lua: wrk script posting one single-sample prediction per request.
-- The body is a 784-value input read from bench/out/predict-body.json.
local f = io.open("bench/out/predict-body.json", "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
