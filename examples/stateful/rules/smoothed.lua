-- A smoothed temperature per device (an exponentially weighted moving average) and an alert
-- when it crosses 60 upwards; the state is two numbers and a flag.
-- Version 2 renamed `avg` to `ewma`: `migrate` carries states written by version 1 over.
return rule {
  name = "smoothed",
  from = "devices/+/telemetry",
  state = { version = 2, max_bytes = 256 },
  migrate = function(old, from_version)
    return { ewma = old.avg, n = old.n, hot = old.hot }
  end,
  handle = function(msg, ctx)
    local temp = msg.payload and msg.payload.temp
    if type(temp) ~= "number" then return ctx.drop("no temp") end
    local s = ctx.state
    s.ewma = s.ewma and (0.8 * s.ewma + 0.2 * temp) or temp
    s.n = (s.n or 0) + 1
    local hot = s.ewma > 60
    if hot and not s.hot then
      ctx.emit("alerts", { device = msg.device, smoothed = s.ewma, after = s.n })
    end
    s.hot = hot
  end,
  tests = {
    { name = "one spike is smoothed away",
      input = { { topic = "devices/d1/telemetry", payload = { temp = 50 } },
                { topic = "devices/d1/telemetry", payload = { temp = 100 } } },
      expect = { emit = {}, state = { d1 = { ewma = 60, n = 2, hot = false } } } },
    { name = "a sustained rise alerts once",
      input = { { topic = "devices/d1/telemetry", payload = { temp = 50 } },
                { topic = "devices/d1/telemetry", payload = { temp = 100 } },
                { topic = "devices/d1/telemetry", payload = { temp = 100 } },
                { topic = "devices/d1/telemetry", payload = { temp = 100 } } },
      expect = { emit = { alerts = { { device = "d1", after = 3 } } },
                 state = { d1 = { n = 4, hot = true } } } },
  },
}
