-- bench/replay.sh with STATE=1: the overheat logic plus a per-device 5-minute tumbling window
-- of temp (count, sum, min, max) kept in ctx.state, read and written on every message. At a
-- window's close the aggregate is emitted. (Issue 17's replay workload, with the window done in
-- Lua until declarative windows are wired.)
return rule {
  name = "stateful",
  from = { "devices/+/telemetry" },
  handle = function(msg, ctx)
    local t = msg.payload and msg.payload.temp
    if t == nil then return ctx.drop("no temp") end
    if type(t) ~= "number" then return ctx.fail("temp is not a number") end
    local s = ctx.state
    local start = msg.ts - msg.ts % 300000
    if s.start ~= start then
      if s.start then
        ctx.emit("alerts", { device = msg.device, start = s.start, count = s.count,
                             avg = s.sum / s.count, min = s.min, max = s.max })
      end
      s.start, s.count, s.sum, s.min, s.max = start, 0, 0, t, t
    end
    s.count, s.sum = s.count + 1, s.sum + t
    if t < s.min then s.min = t end
    if t > s.max then s.max = t end
    if t > 50 then
      ctx.emit("alerts", { device = msg.device, temp = t, ts = msg.ts,
                           severity = t > 55 and "high" or "warn" })
      ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on" }, { qos = 1 })
    end
  end,
}
