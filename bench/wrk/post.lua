-- wrk script for bench/gateway_proxy.py: POSTs a ~1 KB OpenAI chat-completions
-- body (non-streaming, model llama-3-8b) on every request and prints one JSON
-- line with throughput, latency percentiles (microseconds) and errors.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.headers["user"] = "bench" -- the tenant (only the brix+mem/+redis variants limit it)
wrk.body = '{"model":"llama-3-8b","messages":[' ..
  '{"role":"system","content":"You are a concise assistant for infrastructure engineers. Answer in plain prose, cite no sources, and keep every answer under one hundred words unless the user asks for more detail."},' ..
  '{"role":"user","content":"We run several vLLM replicas behind a gateway. Explain in a few sentences why paged attention helps throughput when many requests share a long system prompt, and what the prefix cache stores."},' ..
  '{"role":"assistant","content":"Paged attention keeps the KV cache in fixed-size blocks, so sequences that share a prefix can point at the same blocks instead of copying them."},' ..
  '{"role":"user","content":"And how should the gateway route requests so that the prefix cache actually gets hits across replicas? Give one concrete strategy and say what it costs when a replica is overloaded."}],' ..
  '"max_tokens":128,"temperature":0.7,"top_p":0.95,"stream":false,"presence_penalty":0,"frequency_penalty":0,"n":1,"seed":1234,"user":"bench-client-0001"}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_p50_us":%d,"lat_p90_us":%d,' ..
    '"lat_p99_us":%d,"lat_p999_us":%d,"lat_mean_us":%.1f,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
