// Drives the admin web chat in headless Chromium (playwright-core) and prints what it saw as JSON.
// Used by test_browser.py; env: BASE_URL, USERNAME, PASSWORD, AGENT_ID, SCREENSHOT, CHROMIUM.
const { chromium } = require("playwright-core");

(async () => {
  const env = process.env;
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = { consoleErrors: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => out.consoleErrors.push(String(e)));
    out.notFound = [];
    page.on("response", (r) => { if (r.status() >= 400) out.notFound.push(`${r.status()} ${r.url()}`); });

    await page.goto(`${env.BASE_URL}/admin/login/?next=/admin/webchat/${env.AGENT_ID}/`);
    await page.fill("#id_username", env.USERNAME);
    await page.fill("#id_password", env.PASSWORD);
    await Promise.all([page.waitForURL(`**/admin/webchat/${env.AGENT_ID}/`), page.click("input[type=submit]")]);
    await page.waitForFunction(() => !document.getElementById("webchat-input").disabled, null, { timeout: 15000 });
    out.demoLabel = await page.locator(".webchat-demo").count();

    // Record every distinct text the streaming answer bubble shows.
    await page.evaluate(() => {
      window.__snapshots = [];
      new MutationObserver(() => {
        const b = document.querySelector(".webchat-turn .webchat-msg.assistant");
        if (b && window.__snapshots[window.__snapshots.length - 1] !== b.textContent) window.__snapshots.push(b.textContent);
      }).observe(document.getElementById("webchat-log"), { subtree: true, childList: true, characterData: true });
    });
    await page.fill("#webchat-input", "What time is it?");
    await page.keyboard.press("Enter");
    await page.waitForSelector(".webchat-tool", { timeout: 30000 });
    await page.waitForSelector(".webchat-turn .webchat-msg.assistant:not(.streaming)", { timeout: 30000 });
    out.snapshots = await page.evaluate(() => window.__snapshots.length);
    out.userText = await page.locator(".webchat-msg.user").first().textContent();
    out.toolName = await page.locator(".webchat-tool code").first().textContent();
    out.toolState = await page.locator(".webchat-tool").first().getAttribute("class");
    out.answerHtml = await page.locator(".webchat-turn .webchat-msg.assistant").first().innerHTML();
    out.scriptsInLog = await page.locator("#webchat-log script").count();
    out.injected = await page.evaluate(() => window.__injected === true);
    if (env.SCREENSHOT) await page.screenshot({ path: env.SCREENSHOT, fullPage: true });

    // Stop a long answer.
    await page.fill("#webchat-input", "Tell me a long story");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.querySelectorAll(".webchat-turn").length === 2
      && document.querySelectorAll(".webchat-turn")[1].querySelector(".webchat-msg.assistant")?.textContent.length > 0,
      null, { timeout: 30000 });
    await page.click("#webchat-stop");
    await page.waitForSelector(".webchat-msg.notice:has-text('Stopped.')", { timeout: 5000 });
    out.stopped = true;

    // New session: the log is cleared and the next reload shows an empty session.
    await page.click("#webchat-reset");
    await page.waitForSelector(".webchat-msg.notice:has-text('New session 2')", { timeout: 5000 });
    await page.reload();
    await page.waitForSelector(".webchat-msg.notice:has-text('Session 2')", { timeout: 15000 });
    out.afterResetMessages = await page.locator(".webchat-msg.user").count();
  } catch (e) {
    out.error = String(e);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
})();
