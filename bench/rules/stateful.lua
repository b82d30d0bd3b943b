-- bench/replay.sh with STATE=1 (issue 17's replay workload): the overheat logic, a 5-minute
-- tumbling window of temp per device (avg, min, max, count; by the recording's time), and
-- ctx.state read and written on every message.
return rule {
  name = "stateful",
  from = { "devices/+/telemetry" },
  windows = { t5m = { tumbling = "5m", of = "temp", agg = { "avg", "min", "max", "count" },
                      time = "msg.ts" } },  -- the recording's time
  handle = function(msg, ctx)
    local t = msg.payload and msg.payload.temp
    if t == nil then return ctx.drop("no temp") end
    if type(t) ~= "number" then return ctx.fail("temp is not a number") end
    ctx.state.n = (ctx.state.n or 0) + 1
    if t > 50 then
      ctx.emit("alerts", { device = msg.device, temp = t, ts = msg.ts,
                           severity = t > 55 and "high" or "warn" })
      ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on" }, { qos = 1 })
    end
  end,
  on_window = function(w, ctx)
    ctx.emit("alerts", { device = ctx.device, start = w.start, avg = w.avg, min = w.min,
                         max = w.max, count = w.count })
  end,
}
