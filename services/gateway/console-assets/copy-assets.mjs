// Copies the console's third-party files from node_modules (after `npm ci`) into the gateway
// package's static folder, which serves them from Kiln's own origin (no CDN). Run by
// `make console-assets` and the gateway's Dockerfile; the copies are not committed.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "kiln_gateway", "console", "static", "vendor");

const files = {
  "htmx.org/dist/htmx.min.js": "htmx.min.js",
  "htmx.org/LICENSE": "htmx.LICENSE.txt",
  "uplot/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
  "uplot/dist/uPlot.min.css": "uPlot.min.css",
  "uplot/LICENSE": "uPlot.LICENSE.txt",
};

rmSync(vendor, { recursive: true, force: true });
mkdirSync(vendor, { recursive: true });
for (const [source, target] of Object.entries(files)) {
  copyFileSync(join(here, "node_modules", source), join(vendor, target));
}
console.log(`console assets: ${Object.keys(files).length} files in ${vendor}`);
