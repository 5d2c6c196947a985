/// <reference types="node" />
// Node only (import from "@vicino/sdk/node"): storage in files, for servers, scripts and tests.
// React Native and browsers never load this module (it imports node:fs).
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";

import type { KeyValueStorage } from "./storage.js";

/**
 * One file per key in `dir`, replaced atomically (written aside, then renamed), so a process
 * killed mid-write leaves the previous value, never half a value.
 */
export class FileStorage implements KeyValueStorage {
  private ready?: Promise<unknown>;
  private seq = 0;

  constructor(readonly dir: string) {}

  private path(key: string): string {
    return join(this.dir, encodeURIComponent(key));
  }

  async getItem(key: string): Promise<string | null> {
    try {
      return await readFile(this.path(key), "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw e;
    }
  }

  async setItem(key: string, value: string): Promise<void> {
    this.ready ??= mkdir(this.dir, { recursive: true });
    await this.ready;
    const aside = `${this.path(key)}.${process.pid}.${this.seq++}.tmp`;
    await writeFile(aside, value, { encoding: "utf8", flush: true } as Parameters<typeof writeFile>[2]);
    await rename(aside, this.path(key));
  }

  async removeItem(key: string): Promise<void> {
    await rm(this.path(key), { force: true });
  }
}
