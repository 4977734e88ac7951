-- wrk script: POST a 1 MiB body (1048576 bytes) to every request.
-- Used by benchmarks/run.py for the "upload" scenario with benchmarks.apps:upload_echo,
-- which reads the whole body and answers with its length only.
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
