-- A door left open for two minutes raises an alert; closing it in time cancels the timer.
return rule {
  name = "door",
  from = "devices/+/telemetry",
  handle = function(msg, ctx)
    local door = msg.payload and msg.payload.door
    if door == "open" and not ctx.timer.due("open-too-long") then
      ctx.timer.after("open-too-long", "2m", { opened = msg.ts })
    elseif door == "closed" then
      ctx.timer.cancel("open-too-long")
    end
  end,
  on_timer = function(t, ctx)
    ctx.emit("alerts", { device = ctx.device, door_open_since = t.data.opened, at = ctx.now() })
  end,
  tests = {
    { name = "left open", now = 1000,
      input = { { topic = "devices/d1/telemetry", payload = { door = "open" } },
                { topic = "devices/d1/telemetry", payload = { door = "open" }, at = 60000 },
                { advance = "5m" } },
      expect = { emit = { alerts = { { device = "d1", door_open_since = 1000, at = 121000 } } } } },
    { name = "closed in time", now = 1000,
      input = { { topic = "devices/d1/telemetry", payload = { door = "open" } },
                { topic = "devices/d1/telemetry", payload = { door = "closed" }, at = 60000 },
                { advance = "5m" } },
      expect = { emit = {} } },
  },
}
