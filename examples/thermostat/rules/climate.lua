-- Reports each reading into the device's shadow and desires the fan on above the target
-- (desired.target, default 24) and off two degrees below it. Only a change is written.
return rule {
  name = "climate",
  from = { "devices/+/telemetry" },

  handle = function(msg, ctx)
    local t = msg.payload.temp
    if type(t) ~= "number" then return ctx.drop("no temp") end
    local shadow = ctx.shadow
    ctx.shadow:report { temp = t }
    local target = shadow.desired and shadow.desired.target or 24
    local fan = shadow.desired and shadow.desired.fan or "off"
    if t > target and fan ~= "on" then
      ctx.shadow:desire { fan = "on" }
    elseif t < target - 2 and fan ~= "off" then
      ctx.shadow:desire { fan = "off" }
    end
  end,

  tests = {
    { name = "a hot room gets the fan",
      shadow = { d1 = { reported = { temp = 23, fan = "off" } } },
      input = { topic = "devices/d1/telemetry", payload = { temp = 25.5 } },
      expect = { shadow = { d1 = { reported = { temp = 25.5, fan = "off" },
                                   desired = { fan = "on" }, delta = { fan = "on" } } } } },
    { name = "the device applied it: no delta, nothing desired again",
      shadow = { d1 = { desired = { fan = "on" }, reported = { fan = "on" } } },
      input = { topic = "devices/d1/telemetry", payload = { temp = 25 } },
      expect = { shadow = { d1 = { desired = { fan = "on" }, version = 2 } } } },
    { name = "a cooled room turns the fan off, with its own target",
      shadow = { d2 = { desired = { fan = "on", target = 20 }, reported = { fan = "on" } } },
      input = { topic = "devices/d2/telemetry", payload = { temp = 17.9 } },
      expect = { shadow = { d2 = { desired = { fan = "off", target = 20 },
                                   delta = { fan = "off" }, version = 3 } } } },
  },
}
