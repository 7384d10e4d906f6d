// A result grid that shows a page of rows at a time: only the rows in view
// (and a few around them) are in the DOM, the others are fetched from the
// job's results as the grid scrolls to them.

const ROW = 24;
const PAGE = 500;
const OVERSCAN = 20;
const PAGES_KEPT = 40;

export class Grid {
  constructor(container, fetchPage) {
    this.container = container;
    this.fetchPage = fetchPage;
    this.pages = new Map();
    this.loading = new Set();
    this.columns = [];
    this.total = 0;
    this.jobId = null;
    this.container.addEventListener("scroll", () => this.render());
    this.container.addEventListener("keydown", (e) => {
      const step = { PageDown: 1, PageUp: -1 }[e.key];
      if (step) { this.container.scrollTop += step * this.container.clientHeight; e.preventDefault(); }
      if (e.key === "End") { this.container.scrollTop = this.container.scrollHeight; e.preventDefault(); }
      if (e.key === "Home") { this.container.scrollTop = 0; e.preventDefault(); }
    });
  }

  clear() {
    this.pages.clear();
    this.total = 0;
    this.columns = [];
    this.container.replaceChildren();
  }

  /** Shows job `jobId`'s `total` rows, the first of them `first`. */
  show(jobId, columns, total, first) {
    this.jobId = jobId;
    this.columns = columns;
    this.total = total;
    this.pages.clear();
    // The first page came with the job; pages are PAGE rows from 0.
    if (first.length >= Math.min(PAGE, total)) this.pages.set(0, first.slice(0, PAGE));
    const head = document.createElement("div");
    head.className = "head";
    head.setAttribute("role", "row");
    head.append(this.cell("#", "num", "columnheader"));
    for (const c of columns) head.append(this.cell(`${c.name}`, "", "columnheader", c.type));
    this.spacer = document.createElement("div");
    this.spacer.style.height = `${total * ROW}px`;
    this.spacer.style.position = "relative";
    this.container.setAttribute("role", "grid");
    this.container.setAttribute("aria-rowcount", String(total));
    this.container.replaceChildren(head, this.spacer);
    this.container.scrollTop = 0;
    this.render();
  }

  cell(text, extra, role, title) {
    const cell = document.createElement("div");
    cell.className = `cell ${extra}`;
    cell.setAttribute("role", role);
    if (title) cell.title = title;
    if (text === null) { cell.textContent = "NULL"; cell.classList.add("null"); } else cell.textContent = text;
    return cell;
  }

  row(index) {
    const page = this.pages.get(Math.floor(index / PAGE));
    return page ? page[index % PAGE] : undefined;
  }

  async load(pageIndex) {
    if (this.pages.has(pageIndex) || this.loading.has(pageIndex)) return;
    this.loading.add(pageIndex);
    const jobId = this.jobId;
    try {
      const rows = await this.fetchPage(jobId, pageIndex * PAGE, PAGE);
      if (jobId !== this.jobId) return;
      this.pages.set(pageIndex, rows);
      // Keep the pages nearest the view.
      if (this.pages.size > PAGES_KEPT) {
        const here = Math.floor(this.container.scrollTop / ROW / PAGE);
        const far = [...this.pages.keys()].sort((a, b) => Math.abs(b - here) - Math.abs(a - here));
        for (const key of far.slice(0, this.pages.size - PAGES_KEPT)) this.pages.delete(key);
      }
    } finally {
      this.loading.delete(pageIndex);
    }
    this.render();
  }

  render() {
    if (!this.spacer) return;
    const first = Math.max(0, Math.floor(this.container.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(this.total, Math.ceil((this.container.scrollTop + this.container.clientHeight) / ROW) + OVERSCAN);
    const rows = [];
    for (let i = first; i < last; i++) {
      const values = this.row(i);
      if (values === undefined) this.load(Math.floor(i / PAGE));
      const row = document.createElement("div");
      row.className = "row";
      row.setAttribute("role", "row");
      row.setAttribute("aria-rowindex", String(i + 1));
      row.style.top = `${i * ROW}px`;
      row.append(this.cell(String(i + 1), "num", "rowheader"));
      for (let c = 0; c < this.columns.length; c++) {
        row.append(this.cell(values === undefined ? "…" : values[c], "", "gridcell"));
      }
      rows.push(row);
    }
    this.spacer.replaceChildren(...rows);
  }
}
