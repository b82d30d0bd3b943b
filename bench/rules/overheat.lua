-- The end-to-end benchmarks' rule (issue 2's workload): the quickstart's overheat logic without
-- the shadow report, so the figure measures rules and sinks only. bench/replay.sh with
-- SHADOWS=1 uses the quickstart's rule instead (a shadow report per message).
return rule {
  name = "overheat",
  from = { "devices/+/telemetry" },
  on_error = "dead_letter",

  handle = function(msg, ctx)
    local t = msg.payload and msg.payload.temp
    if t == nil then return ctx.drop("no temp") end
    if type(t) ~= "number" then return ctx.fail("temp is not a number") end
    if t > 50 then
      local alert = { device = msg.device, temp = t, ts = msg.ts,
                      severity = t > 55 and "high" or "warn" }
      ctx.emit("alerts", alert)
      ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on" }, { qos = 1 })
    end
  end,
}
