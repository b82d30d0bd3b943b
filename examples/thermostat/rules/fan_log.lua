-- Shadow events are messages too: log every fan delta gnomon sent to a device.
return rule {
  name = "fan_log",
  from = { "$aws/things/+/shadow/update/delta" },
  handle = function(msg, ctx)
    local fan = msg.payload.state and msg.payload.state.fan
    if fan == nil then return ctx.drop("not a fan change") end
    ctx.emit("fan-changes", { device = msg.device, fan = fan, version = msg.payload.version })
  end,
  tests = {
    { name = "a fan delta is logged",
      input = { topic = "$aws/things/d3/shadow/update/delta", device = "d3",
                payload = { state = { fan = "on" }, version = 7 } },
      expect = { emit = { ["fan-changes"] = { { device = "d3", fan = "on", version = 7 } } } } },
  },
}
