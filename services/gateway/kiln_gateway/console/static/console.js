// Kiln console: behaviour shared by every page. Plain forms work without it; this adds the
// copy buttons of secrets shown once.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const selector = button.getAttribute("data-copy");
  const field = document.querySelector(selector);
  const state = document.querySelector(`[data-copy-state="${selector}"]`);
  if (!field) return;
  try {
    await navigator.clipboard.writeText(field.value);
    if (state) state.textContent = "Copied to the clipboard.";
  } catch (_error) {
    field.focus();
    field.select();
    if (state) state.textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
  }
});
