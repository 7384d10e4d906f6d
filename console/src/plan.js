// EXPLAIN [ANALYZE] output as a tree: stages, then operators nested by
// their indentation, with the rows and time DataFusion measured per node.

function badge(text) {
  const span = document.createElement("span");
  span.className = "badge";
  span.textContent = text;
  return span;
}

/** The measured figures of an operator line (`metrics=[output_rows=3, elapsed_compute=1.2ms, ...]`). */
function figures(line) {
  const found = [];
  const rows = line.match(/output_rows=([0-9]+)/);
  if (rows) found.push(`${rows[1]} rows`);
  const time = line.match(/elapsed_compute=([0-9.]+[a-zµ]+)/);
  if (time) found.push(time[1]);
  const sent = line.match(/rows sent=([0-9]+)/);
  if (sent) found.push(`${sent[1]} rows sent`);
  const elapsed = line.match(/elapsed=([0-9]+ ms)/);
  if (elapsed) found.push(elapsed[1]);
  return found;
}

export function renderPlan(container, rows) {
  container.replaceChildren();
  for (const [kind, text] of rows) {
    const title = document.createElement("h3");
    title.textContent = kind;
    container.append(title);
    const root = document.createElement("ul");
    root.setAttribute("role", "tree");
    container.append(root);
    // Each level of indentation opens a list under the last item above it.
    const stack = [{ indent: -1, list: root }];
    for (const raw of String(text || "").split("\n")) {
      if (!raw.trim()) continue;
      const indent = raw.length - raw.trimStart().length;
      while (stack.length > 1 && stack[stack.length - 1].indent >= indent) stack.pop();
      const item = document.createElement("li");
      item.setAttribute("role", "treeitem");
      const label = raw.trim();
      const name = document.createElement("span");
      const stage = /^Stage [0-9]+/.test(label);
      name.className = stage ? "stage" : "";
      name.textContent = label.replace(/, metrics=\[.*\]$/, "");
      name.title = label;
      item.append(name, ...figures(label).map(badge));
      stack[stack.length - 1].list.append(item);
      const children = document.createElement("ul");
      item.append(children);
      stack.push({ indent, list: children });
    }
  }
}
