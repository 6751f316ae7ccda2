-- wrk script: POST a 1 KiB body to the app "bench"
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Host"] = "bench.localhost"
wrk.headers["Content-Type"] = "application/octet-stream"
