-- Five-minute statistics of each device's temperature (event time from the payload's `ts`, 30 s
-- of grace for stragglers), and an alert when the last ten minutes average above 50.
return rule {
  name = "temp-5m",
  from = "devices/+/telemetry",
  windows = {
    t5m = { tumbling = "5m", of = "temp", agg = { "avg", "min", "max", "count" },
            time = "payload.ts", grace = "30s" },
    recent = { sliding = "10m", of = "temp", agg = { "avg" } },
  },
  handle = function(msg, ctx)
    local avg = ctx.window.recent.avg
    if avg and avg > 50 and not ctx.state.hot then
      ctx.emit("alerts", { device = msg.device, avg_10m = avg })
    end
    ctx.state.hot = avg ~= nil and avg > 50
  end,
  on_window = function(w, ctx)
    ctx.emit("alerts", { device = ctx.device, from = w.start, to = w["end"],
                         avg = w.avg, min = w.min, max = w.max, n = w.count })
  end,
  tests = {
    { name = "a five-minute window closes with its statistics", now = 0,
      input = { { topic = "devices/d1/telemetry", payload = { ts = 10000, temp = 20 } },
                { topic = "devices/d1/telemetry", payload = { ts = 200000, temp = 30 }, at = 200000 },
                { topic = "devices/d1/telemetry", payload = { ts = 331000, temp = 25 }, at = 331000 } },
      expect = { emit = { alerts = { { from = 0, to = 300000, avg = 25, min = 20, max = 30, n = 2 } } } } },
    { name = "ten hot minutes alert once", now = 0,
      input = { { topic = "devices/d1/telemetry", payload = { ts = 0, temp = 60 } },
                { topic = "devices/d1/telemetry", payload = { ts = 60000, temp = 70 }, at = 60000 } },
      expect = { emit = { alerts = { { device = "d1", avg_10m = 60 } } }, state = { d1 = { hot = true } } } },
  },
}
