// @vicino/sdk: the reference client of Vicino's public API for React Native and web apps.
export { VicinoClient, type VicinoClientOptions } from "./client.js";
export { VicinoAppBackend, type AppBackendOptions } from "./app-backend.js";
export { Credentials, type DeviceToken } from "./credentials.js";
export {
  type AuthFailure, type Problem, REFUSAL_CODES, VicinoAuthError, VicinoError, VicinoHttpError, VicinoNetworkError,
  authFailure,
} from "./errors.js";
export {
  type BatchReport, type Fix, FixQueue, type FixQueueOptions, type FixSender, type FlushResult, MAX_BATCH, type WireFix,
  wireFix,
} from "./fix-queue.js";
export { type Region, type RegionSet, RegionSync, type RegionSyncOptions, type RegionsAnswer, distanceM } from "./regions.js";
export { DEFAULT_RETRY, RETRYABLE_STATUSES, type RetryPolicy, parseRetryAfter, retryDelayMs } from "./retry.js";
export { type KeyValueStorage, MemoryStorage } from "./storage.js";
export { fixSeconds, instantMs } from "./times.js";
export { type FetchLike, type RetryEvent, Transport, type TransportOptions } from "./transport.js";
export type * from "./generated/types.js";
