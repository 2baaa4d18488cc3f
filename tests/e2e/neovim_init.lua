-- init.lua for tests/e2e/test_neovim.py: drive PocketPilot through Neovim's native inline completion.
--
-- Inputs (environment): PP_E2E_PYTHON (interpreter running the server), PP_E2E_ROOT (workspace root),
-- PP_E2E_RESULT (JSON report written before quitting), PP_E2E_WAIT_MS (per-step wait, default 60 s).
--
-- The scenario runs in a coroutine that sleeps on timers between steps, so Neovim's main loop keeps
-- running freely: keys given with nvim_input() are processed as typed keys, mode changes and autocmds
-- (InsertEnter / CursorMovedI) happen for real, and the inline-completion module sends its own
-- debounced request. Nothing of the LSP client, the server or the model is stubbed.

local api = vim.api
local uv = vim.uv

local RESULT = assert(os.getenv('PP_E2E_RESULT'), 'PP_E2E_RESULT is not set')
local WAIT_MS = tonumber(os.getenv('PP_E2E_WAIT_MS') or '') or 60000

local report = {
  ok = false,
  error = nil,
  statuses = {}, -- every pocketpilot/status notification, in order
  requests = {}, -- LSP methods sent by the client (LspRequest, type == 'pending')
  mode_when_shown = nil,
  ghost_row = nil, -- 0-based row of the ghost text extmark
  ghost_col = nil,
  ghost_text = nil, -- the virt_text of the extmark(s), concatenated
  line_while_shown = nil, -- buffer line while the ghost text is displayed (must be unchanged)
  get_returned = nil, -- return value of vim.lsp.inline_completion.get()
  line_after_accept = nil,
  cursor_after_accept = nil,
  extmarks_after_accept = nil,
  resolve_supported = nil, -- the client may send codeAction/resolve to the server
  lines_after_docstring = nil, -- the buffer after applying "PocketPilot: Write docstring"
  elapsed_ms = {},
}

local t0 = uv.now()
local function mark(name)
  report.elapsed_ms[name] = uv.now() - t0
end

local finished = false
local function finish()
  if finished then
    return
  end
  finished = true
  local f = assert(io.open(RESULT, 'w'))
  f:write(vim.json.encode(report))
  f:close()
  vim.cmd('qa!')
end

-- Global watchdog, shorter than the Python subprocess timeout, so a report always comes back.
vim.defer_fn(function()
  if not finished then
    report.error = report.error or ('watchdog: scenario did not finish in %d ms'):format(WAIT_MS * 2)
    finish()
  end
end, WAIT_MS * 2)

-- The log lives under stdpath('log'), i.e. $XDG_STATE_HOME/nvim/lsp.log, inside the test's tmp_path.
vim.lsp.log.set_level('debug')
report.lsp_log = vim.lsp.log.get_filename()

vim.lsp.config('pocketpilot', {
  cmd = { assert(os.getenv('PP_E2E_PYTHON')), '-m', 'pocketpilot', 'serve' },
  filetypes = { 'python' },
  root_dir = assert(os.getenv('PP_E2E_ROOT')),
  handlers = {
    ['pocketpilot/status'] = function(_, result)
      table.insert(report.statuses, result)
    end,
  },
})
vim.lsp.enable('pocketpilot')
vim.lsp.inline_completion.enable()

-- Accept like a user would: <Tab> in insert mode calls the real API (the documented mapping).
vim.keymap.set('i', '<Tab>', function()
  local applied = vim.lsp.inline_completion.get()
  report.get_returned = applied
  if not applied then
    return '<Tab>'
  end
end, { expr = true })

api.nvim_create_autocmd('LspRequest', {
  callback = function(ev)
    local req = ev.data and ev.data.request
    if req and req.type == 'pending' then
      table.insert(report.requests, req.method)
    end
  end,
})

local co -- the scenario coroutine

local function step(...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    report.error = debug.traceback(co, tostring(err))
    finish()
  elseif coroutine.status(co) == 'dead' then
    finish()
  end
end

--- Sleep (yielding to the main loop) until cond() is truthy; error after timeout_ms.
local function wait_for(what, cond, timeout_ms)
  local start = uv.now()
  local function check()
    local ok, value = pcall(cond)
    if ok and value then
      step(true, value)
    elseif uv.now() - start > (timeout_ms or WAIT_MS) then
      step(false, ok and 'condition stayed false' or tostring(value))
    else
      vim.defer_fn(check, 50)
    end
  end
  vim.defer_fn(check, 0)
  local done, value = coroutine.yield()
  if not done then
    error(('timed out after %d ms waiting for %s (%s)'):format(timeout_ms or WAIT_MS, what, value), 0)
  end
  return value
end

local function ghost_marks(bufnr)
  local ns = api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  if not ns then
    return {}
  end
  return api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
end

local function scenario()
  local bufnr = api.nvim_get_current_buf()
  assert(vim.bo[bufnr].filetype == 'python', 'buffer filetype is ' .. vim.bo[bufnr].filetype)

  local client = wait_for('the pocketpilot client to attach', function()
    return vim.lsp.get_clients({ bufnr = bufnr, name = 'pocketpilot' })[1]
  end)
  mark('attached')
  -- Client:on_attach() schedules the creation of the inline-completion state for the buffer; one
  -- more trip through the (FIFO) event queue guarantees it ran before we go on.
  wait_for('the scheduled capability setup', function()
    return true
  end)
  wait_for('pocketpilot/status ready', function()
    local last = report.statuses[#report.statuses]
    if last and last.state ~= 'ready' and last.state ~= 'loading' and last.state ~= 'starting' then
      error('server state ' .. vim.inspect(last), 0)
    end
    return last and last.state == 'ready'
  end)
  mark('ready')
  report.server_capabilities = client.server_capabilities
  -- Neovim only attaches inline completion to servers that advertise it in their initialize result.
  assert(
    client:supports_method('textDocument/inlineCompletion', bufnr),
    'the server does not advertise inlineCompletionProvider in its initialize result, so Neovim never '
      .. 'requests inline completions; server capabilities: '
      .. table.concat(vim.tbl_keys(client.server_capabilities or {}), ', ')
  )
  assert(vim.lsp.inline_completion.is_enabled({ bufnr = bufnr }), 'inline completion not enabled')

  -- Cursor on `    return` (line 2), then `A` as typed input: Insert mode at the end of the line.
  -- InsertEnter / CursorMovedI fire for real and the module sends its debounced request.
  api.nvim_win_set_cursor(0, { 2, 0 })
  api.nvim_input('A')
  wait_for('Insert mode', function()
    return api.nvim_get_mode().mode == 'i'
  end, 5000)
  mark('insert')
  assert(vim.deep_equal(api.nvim_win_get_cursor(0), { 2, 10 }), 'cursor ' .. vim.inspect(api.nvim_win_get_cursor(0)))

  local mk = wait_for('ghost text extmark', function()
    for _, m in ipairs(ghost_marks(bufnr)) do
      if m[4].virt_text then
        return m
      end
    end
  end)
  mark('ghost')
  report.mode_when_shown = api.nvim_get_mode().mode
  report.ghost_row, report.ghost_col = mk[2], mk[3]
  local parts = {}
  for _, chunk in ipairs(mk[4].virt_text) do
    table.insert(parts, chunk[1])
  end
  for _, vl in ipairs(mk[4].virt_lines or {}) do
    table.insert(parts, '\n')
    for _, chunk in ipairs(vl) do
      table.insert(parts, chunk[1])
    end
  end
  report.ghost_text = table.concat(parts)
  report.line_while_shown = api.nvim_buf_get_lines(bufnr, 1, 2, true)[1]

  -- Accept through the real API, via the <Tab> mapping typed as input; get() applies it scheduled.
  api.nvim_input('<Tab>')
  wait_for('the buffer line to change', function()
    return api.nvim_buf_get_lines(bufnr, 1, 2, true)[1] ~= report.line_while_shown
  end, 10000)
  mark('accepted')
  report.line_after_accept = api.nvim_buf_get_lines(bufnr, 1, 2, true)[1]
  report.cursor_after_accept = api.nvim_win_get_cursor(0)
  report.extmarks_after_accept = #ghost_marks(bufnr)

  -- "PocketPilot: Write docstring" through the real code-action API (Normal mode, cursor in the body):
  -- the server offers the action without an edit, Neovim resolves it (codeAction/resolve) and applies it.
  api.nvim_input('<Esc>')
  wait_for('Normal mode', function()
    return api.nvim_get_mode().mode == 'n'
  end, 5000)
  api.nvim_win_set_cursor(0, { 2, 4 })
  report.resolve_supported = client:supports_method('codeAction/resolve', bufnr)
  vim.lsp.buf.code_action({
    apply = true,
    filter = function(action)
      return action.title == 'PocketPilot: Write docstring'
    end,
  })
  wait_for('the docstring line', function()
    return api.nvim_buf_line_count(bufnr) > 2
  end)
  mark('docstring')
  report.lines_after_docstring = api.nvim_buf_get_lines(bufnr, 0, -1, true)
  report.ok = true
end

-- Start once the file given on the command line is loaded (VimEnter comes after that).
api.nvim_create_autocmd('VimEnter', {
  once = true,
  callback = function()
    co = coroutine.create(scenario)
    vim.schedule(step)
  end,
})
