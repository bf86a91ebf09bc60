// Prints the client's size: source, minified (terser) and gzip of minified.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { minify } from "terser";

const source = readFileSync(new URL("../pushgate.js", import.meta.url), "utf8");
const { code } = await minify(source, { module: true, compress: true, mangle: true });
const report = { source: source.length, minified: code.length, gzip: gzipSync(code).length };
console.log(JSON.stringify(report));
export default report;
