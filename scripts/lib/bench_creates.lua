-- wrk script of scripts/bench_changes.py's sustained phase: POST /v1/runtimes/rt-N/rules, each
-- request a rule with a host name of its own, the runtimes taken in turn.
-- Arguments (after --): a prefix that makes the host names unique to this run, the number of
-- runtimes. The tenant's API key comes from the environment (BENCH_API_KEY), not the command
-- line.
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  prefix = args[1]
  runtimes = tonumber(args[2])
  sent = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
end

function request()
  sent = sent + 1
  local path = string.format("/v1/runtimes/rt-%d/rules", (id * 7919 + sent) % runtimes)
  local body = string.format(
    '{"host":"%s-%d-%d.example.com","injection":{"credential":"k","header":"x-s"}}',
    prefix, id, sent)
  return wrk.format(nil, path, nil, body)
end
