-- Keeps each device's temperature in its shadow, raises an alert when a device runs hot and
-- tells it to turn its fan on.
return rule {
  name = "overheat",
  from = { "devices/+/telemetry" },
  on_error = "dead_letter",

  handle = function(msg, ctx)
    local t = msg.payload and msg.payload.temp
    if t == nil then return ctx.drop("no temp") end
    if type(t) ~= "number" then return ctx.fail("temp is not a number") end
    ctx.shadow:report { temp = t }
    if t > 50 then
      local alert = { device = msg.device, temp = t, ts = msg.ts,
                      severity = t > 55 and "high" or "warn" }
      ctx.emit("alerts", alert)
      ctx.emit("alerts-stream", alert)
      ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on" }, { qos = 1 })
    end
  end,

  tests = {
    { name = "hot device raises an alert",
      input  = { topic = "devices/d1/telemetry", payload = { temp = 60, ts = 5 } },
      expect = { emit = { alerts = { { device = "d1", temp = 60, severity = "high" } },
                          ["alerts-stream"] = { { device = "d1", severity = "high" } } },
                 publish = { ["devices/d1/cmd"] = { { fan = "on" } } },
                 shadow = { d1 = { reported = { temp = 60 } } } } },
    { name = "cool device is quiet",
      input  = { topic = "devices/d2/telemetry", payload = { temp = 20 } },
      expect = { emit = {}, shadow = { d2 = { reported = { temp = 20 }, version = 1 } } } },
    { name = "the shadow keeps the latest reading",
      shadow = { d3 = { reported = { temp = 30 } } },
      input  = { topic = "devices/d3/telemetry", payload = { temp = 31 } },
      expect = { shadow = { d3 = { reported = { temp = 31 }, version = 2 } } } },
  },
}
