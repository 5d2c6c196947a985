// The operations the transport is typed with: the generated ones (from openapi.json).
import type { Operations as Generated } from "./generated/types.js";
import type { RegionsAnswer } from "./regions.js";

// Routes of issue 16 still being built (branch wt/devices): declared by hand until the snapshot
// holds them, then deleted.
interface Pending {
  "GET /v1/devices/{device_id}/regions": {
    path: { device_id: string };
    query: { lat: number; lon: number; limit?: number };
    body: never;
    response: RegionsAnswer;
  };
  "PUT /v1/devices/{device_id}/push-token": {
    path: { device_id: string };
    query: Record<string, never>;
    body: { push_token: string };
    response: unknown;
  };
  "POST /v1/devices/{device_id}/token": {
    path: { device_id: string };
    query: Record<string, never>;
    body: never;
    response: { token: string; token_expires_at: string | number };
  };
}

export type Operations = Generated & Pending;
export type OperationKey = keyof Operations;
