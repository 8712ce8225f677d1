// Copy-to-clipboard for the one-time key page. Without JavaScript the key stays
// in a read-only, selectable field and the button stays hidden.
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy-target]")) {
    const field = document.getElementById(button.dataset.copyTarget);
    const box = button.closest(".secret-box") || button.parentElement;
    const status = box.querySelector(".copy-status");
    const label = button.textContent;
    let timer;
    button.hidden = false;
    button.addEventListener("click", async () => {
      clearTimeout(timer);
      try {
        await navigator.clipboard.writeText(field.value);
        status.textContent = "Copied to the clipboard.";
        button.textContent = "Copied ✓";
        timer = setTimeout(() => { button.textContent = label; }, 2500);
      } catch {
        // Clipboard blocked (permissions, insecure origin): select it for Ctrl+C instead.
        field.focus();
        field.select();
        status.textContent = "Press Ctrl+C (⌘C on a Mac) to copy the selected key.";
      }
    });
  }
  for (const field of document.querySelectorAll("input.secret, textarea.secret")) {
    field.addEventListener("focus", () => field.select());
  }
  // New key: the date field only with "A date of your choice" (without a script it stays
  // visible, and its hint says when it counts).
  const expiry = document.getElementById("expires_in_days");
  const dateBox = document.querySelector("[data-custom-date]");
  if (expiry && dateBox) {
    const sync = () => {
      dateBox.hidden = expiry.value !== "custom" && !dateBox.querySelector(".error");
    };
    expiry.addEventListener("change", sync);
    sync();
  }
});
