// Bundles src/main.js (with mqtt.js) into dist/, next to index.html and style.css.
// The output is plain static files: the agent serves them, or any web server can.
import { build } from 'esbuild';
import { cpSync, mkdirSync, rmSync } from 'node:fs';

rmSync('dist', { recursive: true, force: true });
mkdirSync('dist');
await build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  target: ['chrome100', 'firefox100', 'safari15'],
  outfile: 'dist/app.js',
  logLevel: 'warning',
});
cpSync('src/index.html', 'dist/index.html');
cpSync('src/style.css', 'dist/style.css');
console.log('web: built dist/');
