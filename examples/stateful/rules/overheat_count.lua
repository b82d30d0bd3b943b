-- Overheats counted per device and UTC day: the count starts over with each new day, survives
-- restarts, and every overheat raises an alert carrying the day's count so far.
return rule {
  name = "overheat-count",
  from = "devices/+/telemetry",
  state = { version = 1, max_bytes = 1024 },
  handle = function(msg, ctx)
    local temp = msg.payload and msg.payload.temp
    if type(temp) ~= "number" then
      return ctx.fail("temp must be a number")
    end
    local today = os.date("!%Y-%m-%d", math.floor(ctx.now() / 1000))
    if ctx.state.day ~= today then
      ctx.state.day, ctx.state.overheats = today, 0
    end
    if temp > 80 then
      ctx.state.overheats = ctx.state.overheats + 1
      ctx.emit("alerts", { device = msg.device, day = today, overheats_today = ctx.state.overheats })
    end
  end,
  tests = {
    { name = "counts the day's overheats", now = 1764936000000,   -- 2025-12-05T12:00Z
      state = { d1 = { day = "2025-12-05", overheats = 2 } },
      input = { { topic = "devices/d1/telemetry", payload = { temp = 85 } },
                { topic = "devices/d1/telemetry", payload = { temp = 20 } },
                { topic = "devices/d2/telemetry", payload = { temp = 90 } } },
      expect = { emit = { alerts = { { device = "d1", overheats_today = 3 },
                                     { device = "d2", overheats_today = 1 } } },
                 state = { d1 = { day = "2025-12-05", overheats = 3 },
                           d2 = { overheats = 1 } } } },
    { name = "a new day starts over", now = 1764979200000,          -- 2025-12-06T00:00Z
      state = { d1 = { day = "2025-12-05", overheats = 7 } },
      input = { topic = "devices/d1/telemetry", payload = { temp = 81 } },
      expect = { emit = { alerts = { { overheats_today = 1, day = "2025-12-06" } } },
                 state = { d1 = { day = "2025-12-06", overheats = 1 } } } },
    { name = "a bad reading changes nothing",
      state = { d1 = { day = "1970-01-01", overheats = 4 } },
      input = { topic = "devices/d1/telemetry", payload = { temp = "hot" } },
      expect = { fail = "temp must be a number", state = { d1 = { overheats = 4 } } } },
  },
}
