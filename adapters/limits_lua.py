"""The Lua source of the Redis limit store: the core's integer steps, in Lua.

Each script mirrors ``sansio_gateway/limits/core.py`` step for step (read
that module's docstring first); the differential test against a real
``redis-server`` holds them to agreeing integer for integer.

Lua numbers are doubles.  Every value stays below 2**53 (the core's bounds
guarantee it), so +, -, * are exact; division goes through ``idiv``, which
corrects the rounding of ``a / b`` so it equals Python's ``a // b``; and
numbers are written back with ``%d``, never ``tostring`` (which keeps only
14 significant digits).

Keys, all sharing one hash tag so one call touches one cluster slot:

* ``KEYS[1]`` ``rl:v1:{u:<user>}:g`` -- hash: ``c`` the clock (largest now
  seen), ``k`` the skew (the state's time minus Redis TIME, grown when TIME
  went back more than ``MAX_LEAD``: the core's "Clock" rule), ``dd``/``du``
  the UTC day index and its committed tokens,
  ``t:<limit>`` each TAT, ``r:<limit>`` microseconds refunded from it.
* ``KEYS[2]`` ``...:inflight`` -- hash: request id ->
  ``"expiry day tokens anchor_user anchor_model"`` (the leases).
* ``KEYS[3]`` (commit only) ``...:done:<request id>`` -- string: until when
  the id counts as committed.

Every write sets an expiry on the keys it touched (never shortening it), so
idle users' state cleans itself up.
"""

from __future__ import annotations

__all__ = ["ADMIT_LUA", "COMMIT_LUA"]

_PRELUDE = r"""
local DAY = 86400000000
local MAX_DEBT = 1099511627776
local MAX_DAY_USED = 1125899906842624
local MARGIN = 60000000
local MAX_NOW = 4503599627370496
local MAX_LEAD = 1000000

-- floor(a / b) exactly, for integers below 2^53 and b > 0
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end
local function cdiv(a, b) return -idiv(-a, b) end
local function num(v) if v then return tonumber(v) end return 0 end
local function str(x) return string.format('%d', x) end

-- the state's now and skew (core._rebased): a caller clock more than
-- MAX_LEAD behind the stored clock rebases the state instead of freezing it
local function clock_now(override, stored, skew)
  local caller
  if override ~= '' then
    caller = tonumber(override)
  else
    local t = redis.call('TIME')
    caller = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local now = math.min(caller + skew, MAX_NOW)
  if now >= stored then return now, skew end
  if stored - now <= MAX_LEAD then return stored, skew end
  return stored, stored - caller
end

-- the UTC day at the state's time (core.today_of): never before g.day
local function today_of(g, now) return math.max(g.day, idiv(now - g.skew, DAY)) end

local function parse_rates(first, n)
  local rates = {}
  for i = 0, n - 1 do
    local j = first + i * 6
    rates[i + 1] = {key = ARGV[j], unit = ARGV[j + 1], scope = ARGV[j + 2],
      L = tonumber(ARGV[j + 3]), P = tonumber(ARGV[j + 4]), A = tonumber(ARGV[j + 5])}
  end
  return rates
end

local function parse_lease(raw)
  local e, d, t, au, am = string.match(raw,
    '^(%-?%d+) (%-?%d+) (%-?%d+) (%-?%d+) (%-?%d+)$')
  return {expiry = tonumber(e), day = tonumber(d), tokens = tonumber(t),
    au = tonumber(au), am = tonumber(am)}
end

local function inc(r, cost) return cdiv(cost * r.P, r.L) end

-- the G hash fields: c, dd, du, then t:<key>, r:<key> per rate
local function load_g(key, rates)
  local fields = {'c', 'dd', 'du', 'k'}
  for _, r in ipairs(rates) do
    fields[#fields + 1] = 't:' .. r.key
    fields[#fields + 1] = 'r:' .. r.key
  end
  local vals = redis.call('HMGET', key, unpack(fields))
  local g = {clock = num(vals[1]), day = num(vals[2]), used = num(vals[3]), skew = num(vals[4]),
    tat = {}, ref = {}}
  for i = 1, #rates do
    g.tat[i] = num(vals[3 + 2 * i])
    g.ref[i] = num(vals[4 + 2 * i])
  end
  return g
end

-- extend a key's expiry to at least ttl_us (+ margin); never shorten it
local function keep(key, ttl_us)
  local want = cdiv(ttl_us + MARGIN, 1000)
  local cur = redis.call('PTTL', key)
  if cur < want then redis.call('PEXPIRE', key, want) end
end
"""

ADMIT_LUA = (
    _PRELUDE
    + r"""
-- ARGV: mode, now_override, rid, tokens, requests, lease_ttl, quota, conc, n, rates...
local G, I = KEYS[1], KEYS[2]
local mode, rid = ARGV[1], ARGV[3]
local tokens, requests = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl, quota, conc = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rates = parse_rates(10, tonumber(ARGV[9]))
local g = load_g(G, rates)
local stored_skew = g.skew
local now
now, g.skew = clock_now(ARGV[2], g.clock, g.skew)
local today = today_of(g, now)
local day_end = (today + 1) * DAY + g.skew  -- in the state's time

local live, dead = {}, {}
local raw = redis.call('HGETALL', I)
for i = 1, #raw, 2 do
  local lease = parse_lease(raw[i + 1])
  if lease.expiry <= now then
    dead[#dead + 1] = raw[i]
  elseif raw[i] ~= rid then
    live[#live + 1] = lease
  end
end

local function rate_status(r, tat, cost)
  if cost > idiv(r.A * r.L, r.P) then return 2, 0 end
  local new = math.max(tat, now) + inc(r, cost)
  if new - now <= r.A then return 0, 0 end
  return 1, new - r.A - now
end

local function rate_level(r, tat)
  local debt = math.max(tat - now, 0)
  local whole = idiv(debt, r.P)
  -- "Used": rounded up, after the <= 1 us/unit slack of rounded charges (core._rate_level)
  local floor_units = whole * r.L + idiv((debt - whole * r.P) * r.L, r.P)
  local d = math.max(debt - floor_units, 0)
  local w = idiv(d, r.P)
  local used = w * r.L + idiv((d - w * r.P) * r.L + r.P - 1, r.P)
  return used, idiv(math.max(r.A - debt, 0) * r.L, r.P), debt
end

local function day_status(used, pending)
  if tokens > quota then return 2, 0 end
  local running = used
  for _, lease in ipairs(pending) do running = running + lease.tokens end
  if running + tokens <= quota then return 0, 0 end
  table.sort(pending, function(a, b) return a.expiry < b.expiry end)
  for _, lease in ipairs(pending) do
    if lease.expiry >= day_end then break end
    running = running - lease.tokens
    if running + tokens <= quota then return 1, lease.expiry - now end
  end
  return 1, day_end - now
end

local function day_level(used, pending)
  local total = used
  for _, lease in ipairs(pending) do total = total + lease.tokens end
  local reset = 0
  if total > 0 then reset = day_end - now end
  return total, math.max(quota - total, 0), reset
end

local function conc_status(leases)
  local count = #leases
  if count + 1 <= conc then return 0, 0 end
  local exps = {}
  for i, lease in ipairs(leases) do exps[i] = lease.expiry end
  table.sort(exps)
  return 1, exps[count - conc + 1] - now
end

local function readings(judge, leases)
  local out = {}
  local function add(v, w, u, rem, res)
    if not judge then v, w = 0, 0 end
    for _, x in ipairs({v, w, u, rem, res}) do out[#out + 1] = x end
  end
  for i, r in ipairs(rates) do
    local cost = tokens
    if r.unit == 'r' then cost = requests end
    local v, w = rate_status(r, g.tat[i], cost)
    local u, rem, res = rate_level(r, g.tat[i])
    add(v, w, u, rem, res)
  end
  if quota >= 0 then
    local used = 0
    if g.day == today then used = g.used end
    local pending = {}
    for _, lease in ipairs(leases) do
      if lease.day == today then pending[#pending + 1] = lease end
    end
    local u, rem, res = day_level(used, pending)
    local v, w = 0, 0
    if judge then v, w = day_status(used, pending) end
    add(v, w, u, rem, res)
  end
  if conc >= 0 then
    local v, w = 0, 0
    if judge then v, w = conc_status(leases) end
    add(v, w, #leases, math.max(conc - #leases, 0), 0)
  end
  return out
end

local pre = readings(mode == 'admit', live)
local denied = false
for i = 1, #pre, 5 do
  if pre[i] ~= 0 then denied = true end
end
if mode ~= 'admit' or denied then
  -- a deny that rebased stores the skew alone, so time moves on
  if mode == 'admit' and g.skew ~= stored_skew then redis.call('HSET', G, 'k', str(g.skew)) end
  table.insert(pre, 1, now)
  return pre
end

-- all limits pass: charge every one of them
local hset = {'c', str(now)}
if g.skew ~= stored_skew then
  hset[#hset + 1] = 'k'
  hset[#hset + 1] = str(g.skew)
end
local anchor = {u = -1, m = -1}
local horizon = ttl
for i, r in ipairs(rates) do
  local cost = tokens
  if r.unit == 'r' then cost = requests end
  local tat = math.max(g.tat[i], now) + inc(r, cost)
  g.tat[i] = tat
  hset[#hset + 1] = 't:' .. r.key
  hset[#hset + 1] = str(tat)
  if r.unit == 't' then anchor[r.scope] = tat + g.ref[i] end
  horizon = math.max(horizon, tat - now)
end
if quota >= 0 and g.day ~= today then
  g.day, g.used = today, 0
  hset[#hset + 1] = 'dd'
  hset[#hset + 1] = str(today)
  hset[#hset + 1] = 'du'
  hset[#hset + 1] = '0'
end
if g.used > 0 and g.day == today then horizon = math.max(horizon, day_end - now) end
redis.call('HSET', G, unpack(hset))
local lease = {expiry = now + ttl, day = today, tokens = tokens, au = anchor.u, am = anchor.m}
redis.call('HSET', I, rid, table.concat({str(lease.expiry), str(today), str(tokens),
  str(anchor.u), str(anchor.m)}, ' '))
for i = 1, #dead, 1000 do  -- in chunks: unpack() has a stack limit
  redis.call('HDEL', I, unpack(dead, i, math.min(i + 999, #dead)))
end
keep(G, horizon)
keep(I, ttl)
live[#live + 1] = lease
local post = readings(false, live)
table.insert(post, 1, now)
return post
"""
)

COMMIT_LUA = (
    _PRELUDE
    + r"""
-- ARGV: now_override, rid, estimate, actual, lease_ttl, quota, n, rates...
local G, I, D = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[2]
local estimate, actual = tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl, quota = tonumber(ARGV[5]), tonumber(ARGV[6])
local rates = parse_rates(8, tonumber(ARGV[7]))
local g = load_g(G, rates)
local stored_skew = g.skew
local now
now, g.skew = clock_now(ARGV[1], g.clock, g.skew)
local today = today_of(g, now)

local done = redis.call('GET', D)
if done and tonumber(done) > now then return {now, 0} end

local lease = nil
local raw = redis.call('HGET', I, rid)
if raw then
  lease = parse_lease(raw)
  if lease.expiry <= now then lease = nil end
end
local est = estimate
if lease then est = lease.tokens end

local hset = {'c', str(now)}
if g.skew ~= stored_skew then
  hset[#hset + 1] = 'k'
  hset[#hset + 1] = str(g.skew)
end
local horizon = ttl
for i, r in ipairs(rates) do
  if r.unit == 't' then
    local tat, spent = g.tat[i], g.ref[i]
    local delta = inc(r, actual) - inc(r, est)
    local anchor = -1
    if lease then
      if r.scope == 'u' then anchor = lease.au else anchor = lease.am end
    end
    if delta > 0 then
      local base = math.max(tat, now)
      if delta > now + MAX_DEBT - base then tat = now + MAX_DEBT else tat = base + delta end
    elseif delta < 0 and anchor ~= -1 then
      local give = math.min(-delta, anchor - spent - now, tat - now)
      if give > 0 then
        tat = tat - give
        spent = spent + give
        hset[#hset + 1] = 'r:' .. r.key
        hset[#hset + 1] = str(spent)
      end
    end
    hset[#hset + 1] = 't:' .. r.key
    hset[#hset + 1] = str(tat)
    horizon = math.max(horizon, tat - now)
  end
end
-- a live lease is charged to the day it was admitted (core._charge_day)
if quota >= 0 and lease and lease.day >= g.day then
  if lease.day > g.day then g.day, g.used = lease.day, 0 end
  g.used = math.min(g.used + actual, MAX_DAY_USED)
  hset[#hset + 1] = 'dd'
  hset[#hset + 1] = str(g.day)
  hset[#hset + 1] = 'du'
  hset[#hset + 1] = str(g.used)
end
if g.used > 0 and g.day == today then
  horizon = math.max(horizon, (today + 1) * DAY + g.skew - now)
end
redis.call('HSET', G, unpack(hset))
redis.call('HDEL', I, rid)
redis.call('SET', D, str(now + ttl), 'PX', cdiv(ttl + MARGIN, 1000))
keep(G, horizon)
return {now, 1}
"""
)
