-- Five-minute average temperature per room: every device reports its room in the payload, and
-- the window is kept per room (by the room's owner), not per device.
return rule {
  name = "rooms",
  from = "devices/+/telemetry",
  windows = {
    room_5m = { tumbling = "5m", of = "temp", agg = { "avg", "count" }, key = "room",
                time = "payload.ts", grace = "30s" },
  },
  handle = function(msg, ctx) end,
  on_window = function(w, ctx)
    ctx.emit("alerts", { room = ctx.device, from = w.start, avg = w.avg, devices_readings = w.count })
  end,
  tests = {
    { name = "the devices of a room make one average", now = 0,
      input = { { topic = "devices/d1/telemetry", payload = { room = "kitchen", ts = 1000, temp = 20 } },
                { topic = "devices/d2/telemetry", payload = { room = "kitchen", ts = 2000, temp = 24 } },
                { topic = "devices/d3/telemetry", payload = { room = "hall", ts = 3000, temp = 15 } },
                { topic = "devices/d1/telemetry", payload = { room = "kitchen", ts = 331000, temp = 21 } } },
      expect = { emit = { alerts = { { room = "kitchen", from = 0, avg = 22, devices_readings = 2 } } } } },
  },
}
