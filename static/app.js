// Copy-to-clipboard for the one-time key page. Without JavaScript the key stays
// in a read-only, selectable field and the button stays hidden.
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy-target]")) {
    const field = document.getElementById(button.dataset.copyTarget);
    const status = button.parentElement.querySelector(".copy-status");
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(field.value);
        status.textContent = "Copied to the clipboard.";
      } catch {
        field.select();
        status.textContent = "Press Ctrl+C (⌘C on a Mac) to copy the selected key.";
      }
    });
  }
  for (const field of document.querySelectorAll("input.secret")) {
    field.addEventListener("focus", () => field.select());
  }
});
