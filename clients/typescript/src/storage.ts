// Where the SDK keeps what must survive the app being killed: an asynchronous string store.
// React Native's AsyncStorage fits as is; `MemoryStorage` is the default (nothing survives);
// `FileStorage` (from "@vicino/sdk/node") keeps one file per key, for Node and the tests.

export interface KeyValueStorage {
  getItem(key: string): Promise<string | null>;
  /** resolves once the value is durable as far as the platform goes */
  setItem(key: string, value: string): Promise<void>;
  removeItem(key: string): Promise<void>;
}

export class MemoryStorage implements KeyValueStorage {
  private readonly items = new Map<string, string>();

  async getItem(key: string): Promise<string | null> {
    return this.items.get(key) ?? null;
  }

  async setItem(key: string, value: string): Promise<void> {
    this.items.set(key, value);
  }

  async removeItem(key: string): Promise<void> {
    this.items.delete(key);
  }

  /** the keys held (for tests and debugging) */
  keys(): string[] {
    return [...this.items.keys()];
  }
}
