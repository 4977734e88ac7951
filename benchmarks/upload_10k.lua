-- wrk script: POST a 10 KiB body (10240 bytes) to every request.
-- Used by benchmarks/run.py for the "upload-10k" scenario with benchmarks.apps:upload_echo,
-- which reads the whole body and answers with its length only.
wrk.method = "POST"
wrk.body = string.rep("x", 10 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
