// The generated types match the committed snapshot; the app's modules use nothing of Node.
import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

test("src/generated/types.ts is what scripts/generate-types.mjs makes of openapi.json", async () => {
  const { generate } = (await import(pathToFileURL(join(ROOT, "scripts", "generate-types.mjs")).href)) as { generate: (doc: unknown) => string };
  const doc = JSON.parse(await readFile(join(ROOT, "openapi.json"), "utf8"));
  const committed = await readFile(join(ROOT, "src", "generated", "types.ts"), "utf8");
  assert.ok(generate(doc) === committed, "src/generated/types.ts is stale: run `npm run generate`");
});

test("the modules an app bundles import nothing from Node (only src/node.ts does)", async () => {
  const dir = join(ROOT, "dist", "src");
  for (const name of await readdir(dir)) {
    if (!name.endsWith(".js") || name === "node.js") continue;
    const text = await readFile(join(dir, name), "utf8");
    assert.doesNotMatch(text, /from\s+["']node:|require\(/, name);
  }
});
