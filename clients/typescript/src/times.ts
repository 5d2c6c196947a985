// Instants at the SDK's edge: the server answers RFC 3339 (older servers: epoch seconds); a fix's
// time goes out as epoch seconds, the compact form the server accepts.

/** Epoch milliseconds of a server instant (RFC 3339 string or epoch seconds). */
export function instantMs(value: string | number | Date): number {
  if (value instanceof Date) return value.getTime();
  if (typeof value === "number") return value * 1000;
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw new RangeError(`not an RFC 3339 instant: ${JSON.stringify(value)}`);
  return ms;
}

/**
 * A fix's time as epoch seconds (millisecond precision). Accepts epoch seconds, a Date or an RFC
 * 3339 string with an offset. Epoch *milliseconds* (what `navigator.geolocation` and React
 * Native's `position.timestamp` give) are refused with a hint rather than sent 1000x too late.
 */
export function fixSeconds(ts: number | Date | string): number {
  let s: number;
  if (ts instanceof Date) s = ts.getTime() / 1000;
  else if (typeof ts === "number") {
    if (ts > 1e11) throw new RangeError(`ts ${ts} looks like epoch milliseconds; pass seconds (ts / 1000) or a Date`);
    s = ts;
  } else {
    if (!/(Z|[+-]\d\d:?\d\d)$/i.test(ts.trim())) throw new RangeError(`ts ${JSON.stringify(ts)} needs a UTC offset`);
    s = Date.parse(ts) / 1000;
  }
  if (!Number.isFinite(s) || s <= 0) throw new RangeError(`ts ${String(ts)} is not a valid time`);
  return Math.round(s * 1000) / 1000;
}
