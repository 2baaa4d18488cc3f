#!/usr/bin/env bash
# `npm run setup`: installs code-server 4.139.1 for the UI test, on the Node 24 binary from the
# npm package `node`, building only the native modules the test uses.
#
# Why not a plain `npm ci`: code-server's postinstall refuses any Node but 24 (npm runs it under
# the Node that runs npm), and it `npm install`s VS Code's dependencies with every install script,
# which compiles a dozen native modules the test never loads, among them `kerberos` (needs the
# krb5 headers, Debian libkrb5-dev) and `node-pty`. So: install everything without install
# scripts, then do what code-server's postinstall.sh does, building only:
#   @vscode/spdlog           the log files; the test reads the extension's log (g++, make, python3)
#   @vscode/native-watchdog  the extension host exits with its parent (a small C++ module)
#   @parcel/watcher          the file watcher (prebuilt for Linux x64/arm64: nothing is compiled)
# and argon2 (code-server loads it at startup; prebuilt). Left unbuilt, loaded by VS Code only
# when used: kerberos (Kerberos proxy auth), node-pty (the integrated terminal), @vscode/sqlite3
# and @vscode/fs-copyfile (the agent host), @vscode/deviceid (telemetry), the Windows modules,
# and those code-server's own allowScripts denies (koffi, ssh2, cpu-features).
# Needs the npm registry. Errors: the first failing step stops the script with npm's message.
set -euo pipefail
cd "$(dirname "$0")"

npm ci --ignore-scripts
npm rebuild node # its preinstall fetches the Node 24 binary (the npm package node-<os>-<arch>)
export PATH="$PWD/node_modules/node/bin:$PATH"
if [ "$(node -p 'process.versions.node.split(".")[0]')" != 24 ]; then
  echo "ui-test setup: expected Node 24 in node_modules/node/bin, got $(node --version): rerun npm run setup" >&2
  exit 1
fi
# Compile against the headers that come with that Node binary (no download, and no nodedir from
# an .npmrc naming another Node's headers); where they are missing, node-gyp downloads them.
headers="$PWD/node_modules/node/node_modules/node-$(node -p 'process.platform + "-" + process.arch')"
if [ -f "$headers/include/node/node_api.h" ]; then export npm_config_nodedir="$headers"; fi
npm rebuild argon2

# code-server's postinstall.sh, without the Node check and with only the modules above built.
vscode=node_modules/code-server/lib/vscode
(cd "$vscode" && npm install --omit=dev --ignore-scripts && npm rebuild @vscode/spdlog @vscode/native-watchdog @parcel/watcher)
(cd "$vscode/extensions" && npm install --omit=dev --ignore-scripts && node postinstall.mjs >/dev/null)
# postinstall.sh also points bin/remote-cli/code-server and bin/helpers/browser.sh at the
# platform's scripts; the package ships them as copies of the Linux ones, which is what we need.
echo "ui-test setup: code-server $(node -p 'require("./node_modules/code-server/package.json").version') on Node $(node --version)" >&2
