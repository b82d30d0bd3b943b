-- Telemetry into the shadow: the lock's battery level, reported; a reading per message.
return rule {
  name = "battery",
  from = { "devices/+/telemetry" },
  handle = function(msg, ctx)
    local level = msg.payload.battery
    if type(level) ~= "number" then return ctx.drop("no battery level") end
    ctx.shadow:report { battery = level }
    ctx.emit("readings", { device = msg.device, battery = level })
  end,
  tests = {
    { name = "a reading is kept",
      input = { topic = "devices/lock-1/telemetry", device = "lock-1", payload = { battery = 80 } },
      expect = { emit = { readings = { { device = "lock-1", battery = 80 } } } } },
  },
}
