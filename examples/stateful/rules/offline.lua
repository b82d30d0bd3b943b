-- A device that has sent nothing for 10 minutes is offline: an alert, and `online = false` in
-- its state for the other rules' and the API's benefit. The first message after that brings it
-- back with an alert of its own.
return rule {
  name = "offline",
  from = "devices/+/telemetry",
  inactivity = "10m",
  handle = function(msg, ctx)
    if ctx.state.online == false then
      ctx.emit("alerts", { device = msg.device, back_online = true, after_ms = msg.ts - ctx.state.since })
    end
    ctx.state.online, ctx.state.since = true, msg.ts
  end,
  on_inactive = function(ev, ctx)
    ctx.state.online, ctx.state.since = false, ev.last_seen
    ctx.emit("alerts", { device = ctx.device, offline = true, last_seen = ev.last_seen })
  end,
  tests = {
    { name = "offline after ten minutes of silence, once", now = 0,
      input = { { topic = "devices/d1/telemetry", payload = { temp = 20 } },
                { advance = "9m" },
                { topic = "devices/d1/telemetry", payload = { temp = 21 } },   -- at 9m
                { advance = "1h" } },
      expect = { emit = { alerts = { { device = "d1", offline = true, last_seen = 540000 } } },
                 state = { d1 = { online = false } } } },
    { name = "back online", now = 0,
      input = { { topic = "devices/d1/telemetry", payload = {} },
                { topic = "devices/d1/telemetry", payload = {}, at = 3600000 } },
      expect = { emit = { alerts = { { offline = true, last_seen = 0 },
                                     { back_online = true, after_ms = 3600000 } } },
                 state = { d1 = { online = true, since = 3600000 } } } },
  },
}
