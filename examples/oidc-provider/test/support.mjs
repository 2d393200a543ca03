// A throw-away `sigild dev` for the tests: its own state directory (SoftHSM token, dev PKI,
// Unix socket) and its own dev pointer directory, on a port the kernel picks; stopped (SIGTERM)
// when the test ends. The binary: SIGILD_BIN, else the debug build under CARGO_TARGET_DIR (or
// the repository's target/).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

export function sigildBin() {
  const bin = process.env.SIGILD_BIN
    ?? join(process.env.CARGO_TARGET_DIR ?? join(REPO, 'target'), 'debug', 'sigild');
  if (!existsSync(bin)) throw new Error(`${bin} not found: build sigild (cargo build) or set SIGILD_BIN`);
  return bin;
}

/**
 * Starts `sigild dev` and resolves once it is ready with {bin, dir, env, socket, https, ca,
 * cert, key, stop()}; `env` is what the CLI needs to reach this daemon.
 */
export async function startDevDaemon() {
  const bin = sigildBin();
  const root = mkdtempSync(join(tmpdir(), 'sigild-oidc-'));
  const dir = join(root, 'state');
  const env = { ...process.env, XDG_RUNTIME_DIR: join(root, 'run') };
  delete env.SIGILD_ENDPOINT;
  const child = spawn(bin, ['dev', '--state-dir', dir, '--listen', '127.0.0.1:0'], {
    env: { ...env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const https = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sigild dev not ready after 60 s:\n${log}`)), 60_000);
    const scan = (chunk) => {
      log += chunk;
      const m = /sigild dev ready on (https:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.setEncoding('utf8').on('data', scan);
    child.stderr.setEncoding('utf8').on('data', scan);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`sigild dev exited (${code}):\n${log}`));
    });
  });
  const kill = () => child.kill('SIGTERM');
  process.once('exit', kill);
  return {
    bin,
    dir,
    socket: `unix:${join(dir, 'sigild.sock')}`,
    https,
    ca: join(dir, 'ca.pem'),
    cert: join(dir, 'client.pem'),
    key: join(dir, 'client.key'),
    cliEnv: { ...env, SIGILD_ENDPOINT: `unix:${join(dir, 'sigild.sock')}` },
    log: () => log,
    async stop() {
      process.removeListener('exit', kill);
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        kill();
        await exited;
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
}
