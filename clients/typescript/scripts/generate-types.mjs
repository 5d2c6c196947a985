#!/usr/bin/env node
// Writes src/generated/types.ts from openapi.json (the front door's document, committed as a
// snapshot): one TypeScript type per component schema and an `Operations` map keyed by
// "METHOD /path" that the SDK's transport is typed with, so a route or field that changes on the
// server breaks the SDK's compilation. No dependencies and no network: `npm run generate`.
// `node scripts/generate-types.mjs --check` exits 1 when the committed file is stale.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const METHODS = ["get", "put", "post", "patch", "delete"];
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** A schema name as a TypeScript identifier (pydantic names may hold `-`, `.` or `[`). */
export function typeName(name) {
  const clean = name.replace(/[^A-Za-z0-9_$]/g, "_");
  return /^[0-9]/.test(clean) ? `_${clean}` : clean;
}

function refName(ref) {
  const prefix = "#/components/schemas/";
  if (!ref.startsWith(prefix)) throw new Error(`unsupported $ref ${ref}`);
  return typeName(ref.slice(prefix.length));
}

function docComment(text, indent) {
  if (!text) return "";
  const lines = String(text).replace(/\*\//g, "*\\/").trim().split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} *${l ? " " + l : ""}`).join("\n")}\n${indent} */\n`;
}

function key(name) {
  return IDENTIFIER.test(name) ? name : JSON.stringify(name);
}

function union(types) {
  const unique = [...new Set(types)];
  if (unique.includes("unknown")) return "unknown";
  return unique.length ? unique.join(" | ") : "never";
}

function wrap(t) {
  return /[|&]/.test(t) && !/^\{[\s\S]*\}$/.test(t) ? `(${t})` : t;
}

/** The TypeScript type of a JSON Schema (the subset pydantic and our hand-written schemas use). */
export function tsType(schema, indent = "") {
  if (schema === true || schema === undefined || schema === null) return "unknown";
  if (schema === false) return "never";
  if (schema.$ref) return refName(schema.$ref);
  if ("const" in schema) return JSON.stringify(schema.const);
  if (Array.isArray(schema.enum)) return union(schema.enum.map((v) => JSON.stringify(v)));
  if (schema.anyOf || schema.oneOf) return union((schema.anyOf || schema.oneOf).map((s) => tsType(s, indent)));
  if (schema.allOf) {
    const parts = schema.allOf.map((s) => tsType(s, indent));
    return parts.length === 1 ? parts[0] : parts.map(wrap).join(" & ");
  }
  if (Array.isArray(schema.type)) return union(schema.type.map((t) => tsType({ ...schema, type: t }, indent)));
  switch (schema.type) {
    case "string": return "string";
    case "integer":
    case "number": return "number";
    case "boolean": return "boolean";
    case "null": return "null";
    case "array":
      if (Array.isArray(schema.prefixItems)) return `[${schema.prefixItems.map((s) => tsType(s, indent)).join(", ")}]`;
      return `${wrap(tsType(schema.items, indent))}[]`;
    case "object":
      return objectType(schema, indent);
    default:
      return schema.properties ? objectType(schema, indent) : "unknown";
  }
}

function objectType(schema, indent) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const inner = indent + "  ";
  const lines = Object.entries(props).map(([name, s]) =>
    docComment(s.description, inner) + `${inner}${key(name)}${required.has(name) ? "" : "?"}: ${tsType(s, inner)};`);
  const extra = schema.additionalProperties;
  if (extra && extra !== true) lines.push(`${inner}[key: string]: ${tsType(extra, inner)};`);
  else if (extra === true || (extra === undefined && !Object.keys(props).length)) lines.push(`${inner}[key: string]: unknown;`);
  return lines.length ? `{\n${lines.join("\n")}\n${indent}}` : "Record<string, never>";
}

function jsonContent(content) {
  if (!content) return undefined;
  const media = Object.keys(content).find((m) => m === "application/json" || m.endsWith("+json"));
  return media ? content[media].schema || {} : undefined;
}

function operationEntry(path, method, op) {
  const params = op.parameters || [];
  const group = (where) => {
    const ps = params.filter((p) => p.in === where);
    if (!ps.length) return "Record<string, never>";
    return `{ ${ps.map((p) => `${key(p.name)}${p.required ? "" : "?"}: ${tsType(p.schema, "      ")}`).join("; ")} }`;
  };
  const body = jsonContent(op.requestBody?.content);
  const ok = Object.keys(op.responses || {}).filter((s) => /^2\d\d$/.test(s)).sort();
  const bodies = ok.map((s) => jsonContent(op.responses[s].content)).filter((s) => s !== undefined);
  const response = bodies.length ? union(bodies.map((s) => tsType(s, "    "))) : "void";
  return docComment(op.summary, "  ") +
    `  ${JSON.stringify(`${method.toUpperCase()} ${path}`)}: {\n` +
    `    path: ${group("path")};\n    query: ${group("query")};\n` +
    `    body: ${body === undefined ? "never" : tsType(body, "    ")};\n    response: ${response};\n  };`;
}

/** The whole file for one OpenAPI document. */
export function generate(doc) {
  const out = [
    "// Generated by scripts/generate-types.mjs from openapi.json: do not edit.",
    `// ${doc.info?.title ?? "OpenAPI"} (version ${doc.info?.version ?? "?"}). Regenerate with \`npm run generate\`.`,
    "/* eslint-disable */",
    "",
  ];
  const schemas = doc.components?.schemas || {};
  for (const name of Object.keys(schemas).sort()) {
    const s = schemas[name];
    const t = tsType(s, "");
    out.push(docComment(s.description, "") + (t.startsWith("{\n")
      ? `export interface ${typeName(name)} ${t}` : `export type ${typeName(name)} = ${t};`));
    out.push("");
  }
  const entries = [];
  for (const path of Object.keys(doc.paths || {}).sort()) {
    for (const method of METHODS) {
      const op = doc.paths[path][method];
      if (op) entries.push(operationEntry(path, method, op));
    }
  }
  out.push("/** Every operation of the public surface: path and query parameters, JSON body and 2xx answer. */");
  out.push(`export interface Operations {\n${entries.join("\n")}\n}`);
  out.push("");
  out.push("export type OperationKey = keyof Operations;");
  out.push("");
  return out.join("\n");
}

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const doc = JSON.parse(readFileSync(join(root, "openapi.json"), "utf8"));
  const target = join(root, "src", "generated", "types.ts");
  const text = generate(doc);
  if (process.argv.includes("--check")) {
    const current = readFileSync(target, "utf8");
    if (current !== text) {
      console.error("src/generated/types.ts is stale against openapi.json: run `npm run generate`");
      process.exit(1);
    }
  } else {
    writeFileSync(target, text);
    console.log(`wrote ${target}`);
  }
}
