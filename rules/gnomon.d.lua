---@meta
-- LuaLS (lua-language-server) annotations for gnomon rules. Point your editor at this file
-- (in .luarc.json: { "workspace.library": ["path/to/gnomon/rules/gnomon.d.lua"] }) to get
-- completion and type checks for `rule { ... }`, `msg`, `ctx` and `json`.

---A read-only, lazy view of a JSON object or array (the payload or a part of it). Index it
---like a table: `v.field`, `v[1]`, `#v`. Valid only during the `handle` call.
---@class gnomon.JsonView
---@field [string] any
---@field [integer] any

---@alias gnomon.JsonValue string|number|boolean|gnomon.JsonNull|gnomon.JsonView|table|nil

---@class gnomon.JsonNull

---@class gnomon.Message
---@field topic string The topic; `msg.topic[i]` is level i (1-based), nil when absent.
---@field device string The device id found by the source.
---@field payload gnomon.JsonValue Lazy view of the JSON payload; nil when it is not JSON.
---@field payload_error string|nil Why `payload` is nil (invalid JSON, empty payload, ...).
---@field raw string The payload bytes.
---@field ts number Ingest time (or the recording's ts), epoch ms.
---@field headers table<string, string> MQTT 5 user properties / recording headers.
---@field source string The source's name.

---@class gnomon.EmitOptions
---@field key? string Record key (default: the device id).
---@field topic? string Topic override (MQTT sinks).
---@field headers? table<string, string>

---@class gnomon.PublishOptions
---@field qos? 0|1
---@field retain? boolean

---@class gnomon.Log
---@field debug fun(...: any)
---@field info fun(...: any)
---@field warn fun(...: any)
---@field error fun(...: any)

---@class gnomon.Context
---@field log gnomon.Log Structured log lines carrying the rule and device.
---@field shadow gnomon.Shadow The classic shadow of `msg.device` (needs `shadows:` in the config).
---@field model gnomon.Model|nil The thing model bound to `msg.device`, or nil.
---@field device string The device the call is for (msg.device; in on_timer / on_inactive the timer's device).
---@field window table<string, gnomon.WindowValues> The rule's sliding windows as of this message.
---@field timer gnomon.Timers Durable timers of this rule and device (on_timer runs when one is due).
---@field state table This rule's durable state for `msg.device` (docs/rules.md#state; needs `shadows:`). Read on first use in a call; written back when `handle` returns, only if it changed and only if the call succeeds. Must stay JSON (tables, strings, numbers, booleans) within `state.max_bytes`.
local Context = {}

---A device shadow (docs/shadows.md). Reads happen once per call and show the state from before
---this call's writes; writes are buffered effects applied when `handle` returns.
---A thing model (docs/thing-models.md).
---@class gnomon.Timers
local Timers = {}
---Fire on_timer `delay` from now (a duration such as "90s", "10m", "1h", or ms); replaces a pending timer of that name.
---@param name string 1-64 characters of [A-Za-z0-9_.:-]
---@param delay string|number
---@param data? any JSON-encodable, up to 4 KiB; given to on_timer as t.data
function Timers.after(name, delay, data) end
---Fire on_timer at `epoch_ms` (at once if it has passed).
---@param name string
---@param epoch_ms number
---@param data? any
function Timers.at(name, epoch_ms, data) end
---Cancel a pending timer.
---@param name string
---@return boolean was_pending
function Timers.cancel(name) end
---When a pending timer fires (epoch ms), or nil.
---@param name string
---@return number|nil
function Timers.due(name) end

---@class gnomon.TimerEvent
---@field name string
---@field due number Epoch ms it was due at.
---@field data any What ctx.timer.after/at was given, or nil.

---@class gnomon.InactiveEvent
---@field last_seen number The device's last message to the rule, epoch ms (after a restart: at most a tenth of `inactivity` early).
---@field inactivity_ms number

---@class gnomon.Model
---@field id string modelId
---@field version string
---@field ref string "modelId@version"
local Model = {}
---Checks `patch` as a shadow write to `section` (default "reported") would be checked.
---@param patch table|gnomon.JsonView A table, or an object of `msg.payload`.
---@param section? "reported"|"desired"
---@return boolean ok
---@return {path: string, error: string, message: string}[]|nil problems
function Model:validate(patch, section) end

---@class gnomon.Shadow
---@field reported table|nil
---@field desired table|nil
---@field delta table|nil
---@field version integer|nil nil when the shadow does not exist.
local Shadow = {}
---The whole document (`state`, `metadata`, `version`, `timestamp`), or nil.
---@return table|nil
function Shadow:get() end
---Merge `patch` into `reported` (JSON Merge Patch: `json.null` deletes a key). `patch` may be
---an object of `msg.payload` (`ctx.shadow:report(msg.payload)`): written as it came, without
---becoming a Lua table.
---@param patch table|gnomon.JsonView
function Shadow:report(patch) end
---Merge `patch` into `desired`.
---@param patch table|gnomon.JsonView
function Shadow:desire(patch) end
---A full update request: `{ state = { desired =, reported = }, version =, clientToken =, options = { ifChanged = } }`.
---@param request table|string|gnomon.JsonView
function Shadow:update(request) end

---Another shadow: reads see its last committed state; writes go to its owner, in order.
---@param thing string
---@param name? string A named shadow.
---@return gnomon.Shadow
function Context.shadow_of(thing, name) end

---Send a record to a sink from the config. Tables are JSON-encoded; strings go as raw bytes.
---Buffered: committed only if `handle` returns normally.
---@param sink string
---@param record table|string|gnomon.JsonView
---@param options? gnomon.EmitOptions
function Context.emit(sink, record, options) end

---Publish to devices over MQTT (the `publish.sink`). Buffered like `emit`.
---@param topic string A topic without wildcards.
---@param payload table|string|gnomon.JsonView
---@param options? gnomon.PublishOptions
function Context.publish(topic, payload, options) end

---Stop here: nothing this call did is committed; counted as `filtered`. The reason is logged
---at debug level and shown as the rule's `last_drop` in `/v1/rules`.
---@param reason? string
function Context.drop(reason) end

---Call a thing-model service on a device (docs/thing-models.md#services). Buffered like `emit`:
---the call is made when `handle` returns; a refused call dead-letters the message.
---@param thing string
---@param service string
---@param params? table|gnomon.JsonView A table, or an object of `msg.payload`.
---@return string id The call's id (GET /v1/things/{thing}/services/calls/{id}).
function Context.invoke(thing, service, params) end

---This message failed: nothing is committed; the rule's `on_error` applies.
---@param reason? string
function Context.fail(reason) end

---Current time, epoch ms (fixed by `now` in tests).
---@return number
function Context.now() end

---@class gnomon.TestInput
---@field topic string
---@field payload? any
---@field raw? string
---@field device? string Default: the topic's second level.
---@field headers? table<string, string>
---@field ts? number
---@field at? number Virtual time: the test's clock moves to this epoch ms first (timers and silences due on the way fire).
---@field advance? string|number A step, not a message: moves the test's clock on by this duration.

---@class gnomon.TestExpect
---@field emit? table<string, table[]> Records by sink, in order (each a subset of the actual).
---@field publish? table<string, table[]> Payloads by topic, in order.
---@field drop? boolean|string true, or a substring of the reason given to `ctx.drop`.
---@field fail? string A substring of the error.
---@field invoke? table<string, table[]> Service calls by thing, in order: `{ service =, params = }`, subset match.
---@field shadow? table<string, table> Resulting shadows by device: `{ reported =, desired =, delta =, version = }`, subset match.
---@field state? table<string, table|false> The rule's resulting `ctx.state` by device (subset match); false: the device has none.

---@class gnomon.Test
---@field name string
---@field input gnomon.TestInput|gnomon.TestInput[]
---@field now? number
---@field shadow? table<string, table> Initial shadows by device: `{ reported =, desired = }`.
---@field state? table<string, table> The rule's initial `ctx.state` by device.
---@field expect gnomon.TestExpect

---@class gnomon.Limits
---@field instructions? number Lua VM instructions per call (default 1000000; not with jit = true).
---@field memory_mb? number Lua heap growth per call (default 32).
---@field heap_mb? number What the rule may keep across calls, globals included (default 64); over it the call fails and, if the rule still holds more than half of it, its globals are reset.
---@field wall_ms? number Wall-clock time per call (default 5000); enforced by the watchdog.

---@class gnomon.Quarantine
---@field failures? number Failures that are the rule's own fault (errors, limits; not ctx.fail) allowed in the window before the rule stops for every device (default 100).
---@field window_s? number The window (default 60).
---@field device_failures? number The same, from one device, before the rule stops for that device only (default 10).
---@field cooldown_s? number How long a quarantine lasts before one message probes the rule again (default 60).

---@class gnomon.WindowValues
---@field count integer
---@field sum? number
---@field avg? number
---@field min? number
---@field max? number
---@field first? number
---@field last? number
---@field stddev? number

---@class gnomon.ClosedWindow: gnomon.WindowValues
---@field name string
---@field start number Epoch ms.
---@field end number Epoch ms, exclusive (w["end"] in Lua).

---@class gnomon.Window
---@field tumbling? string Length ("5m"): back-to-back windows.
---@field hopping? string Length of overlapping windows, one starting every `hop`.
---@field hop? string
---@field sliding? string The last so long, as of each message (read with ctx.window.NAME).
---@field session? string The gap that ends a run of messages.
---@field of? string The payload field aggregated ("temp", "a.b"); none: messages are counted.
---@field agg? ("count"|"sum"|"avg"|"min"|"max"|"first"|"last"|"stddev")[] Default { "count" }.
---@field time? string Event time: a payload field in epoch ms ("payload.ts"), or "msg.ts" (the message's timestamp); none: processing time (closes by the clock).
---@field grace? string How long after its end a window still takes late messages.
---@field key? string A payload field ("payload.room"): one window per its value instead of per device; on_window runs with ctx.device = the key, in a row of the key's own (never the state of a device of that name; ctx.shadow and ctx.model fail there).
---@field max_open? integer Windows open at once (default 64).
---@field max_events? integer Messages a sliding window holds (default 10000).

---@class gnomon.StateOptions
---@field version? integer The state's version (default 1); a state stored under another one goes through `migrate` first.
---@field max_bytes? integer The most the state may take as JSON per device (default 65536, at most 1048576); a call that leaves more fails.

---@class gnomon.Rule
---@field name string Unique, [a-z0-9_-]+.
---@field description? string
---@field from string|string[] MQTT topic filters (+ and #).
---@field on_error? "dead_letter"|"drop"|"retry"
---@field max_attempts? integer With on_error = "retry" (default 3).
---@field limits? gnomon.Limits
---@field jit? boolean Compile with LuaJIT; the instruction limit no longer applies.
---@field quarantine? gnomon.Quarantine
---@field state? gnomon.StateOptions
---@field inactivity? string A duration ("10m", at least "1s"): on_inactive runs once a device has sent the rule nothing for that long.
---@field windows? table<string, gnomon.Window> Windows computed natively per device (docs/rules.md#windows).
---@field on_window? fun(w: gnomon.ClosedWindow, ctx: gnomon.Context) Runs as each tumbling, hopping or session window closes.
---@field on_late? fun(msg: gnomon.Message, w: {name: string}, ctx: gnomon.Context) A message too late for window w.name.
---@field on_timer? fun(t: gnomon.TimerEvent, ctx: gnomon.Context)
---@field on_inactive? fun(ev: gnomon.InactiveEvent, ctx: gnomon.Context)
---@field migrate? fun(old: table, from_version: integer): table Turns a state stored under another `state.version` into this one's; runs once per device, on first use.
---@field handle fun(msg: gnomon.Message, ctx: gnomon.Context)
---@field tests? gnomon.Test[]

---Declares a rule. A rule file returns `rule { ... }`.
---@param definition gnomon.Rule
---@return gnomon.Rule
function rule(definition) end

---@class gnomon.Json
---@field null gnomon.JsonNull JSON null (distinct from nil).
json = {}

---@param value any
---@return string
function json.encode(value) end

---@param text string
---@return any
function json.decode(text) end

---Marks a table as an array, so `{}` encodes as `[]`.
---@param t? table
---@return table
function json.array(t) end

---Deep copy of a view into tables (views die when `handle` returns).
---@param v any
---@return any
function json.totable(v) end

---Iterates a view or a table. A view is walked in place: its fields in the document's order
---(an array's items with their 1-based index), nested objects and arrays as views.
---@param v gnomon.JsonView|table
---@return fun(state: any, k: any): any, any
---@return any
---@return nil
function json.pairs(v) end
