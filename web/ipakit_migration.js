// IPAdapter Kit: converts workflows of the older IPAdapter Plus pack when they are loaded.
//
// Before the graph is built (beforeConfigureGraph), a workflow holding node types of the older pack that are not
// installed (or answered only by this pack's compatibility ids) is sent to the pack's route
// (POST /ipadapter_kit/migration/convert: the one converter, in Python) and replaced in place by the converted
// workflow; a panel then says what changed. Where the older pack is installed its nodes are left alone. The
// compatibility node types are kept out of the Add Node menu (the current frontend also hides them from search,
// as they are DEPRECATED).

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

const BASE = "/ipadapter_kit/migration";
const PANEL_ID = "ipakit-migration-report";
let about = null;
let pending = null;

async function getAbout() {
	if (about === null) {
		try {
			const resp = await api.fetchApi(BASE);
			about = resp.ok ? await resp.json() : false;
		} catch (error) {
			console.warn("IPAdapter Kit: the migration route did not answer", error);
			about = false;
		}
	}
	return about;
}

function nodeTypes(graphData) {
	const nodes = [...(graphData.nodes || [])];
	for (const sub of graphData.definitions?.subgraphs || []) nodes.push(...(sub.nodes || []));
	return nodes.filter((n) => n && typeof n.type === "string").map((n) => n.type);
}

function needsConversion(type, info) {
	if (info.older_pack || !info.old_ids.includes(type)) return false;
	const installed = type in (globalThis.LiteGraph?.registered_node_types || {});
	return !installed || info.legacy_ids_registered.includes(type);
}

function el(tag, props = {}, children = []) {
	const node = Object.assign(document.createElement(tag), props);
	for (const child of children) node.append(child);
	return node;
}

function showReport(answer) {
	document.getElementById(PANEL_ID)?.remove();
	const report = answer.report;
	const warnings = report.warnings || [];
	const details = el("pre", { textContent: answer.markdown });
	Object.assign(details.style, { display: "none", whiteSpace: "pre-wrap", maxHeight: "45vh", overflow: "auto", margin: "6px 0" });
	const button = (text, onclick) => {
		const b = el("button", { textContent: text, onclick });
		b.style.marginRight = "6px";
		return b;
	};
	const panel = el("div", { id: PANEL_ID }, [
		el("b", { textContent: "IPAdapter Plus workflow converted to IPAdapter Kit" }),
		el("div", { className: "ipakit-summary", textContent: answer.summary }),
		...warnings.slice(0, 5).map((w) => el("div", { className: "ipakit-warning", textContent: "\u26a0 " + w })),
		details,
		el("div", {}, [
			button("Details", () => (details.style.display = details.style.display === "none" ? "block" : "none")),
			button("Save report", () => {
				const link = el("a", { download: "ipakit-migration-report.md",
					href: URL.createObjectURL(new Blob([answer.markdown], { type: "text/markdown" })) });
				link.click();
			}),
			button("Close", () => panel.remove()),
		]),
	]);
	Object.assign(panel.style, {
		position: "fixed", right: "12px", bottom: "12px", zIndex: 10000, maxWidth: "560px", padding: "10px 12px",
		background: "#222", color: "#ddd", border: "1px solid #4a4", borderRadius: "6px", font: "12px sans-serif",
	});
	document.body.append(panel);
	app.extensionManager?.toast?.add?.({ severity: warnings.length ? "warn" : "info", summary: "IPAdapter Kit",
		detail: answer.summary, life: 8000 });
	console.info("IPAdapter Kit:", answer.summary, report);
}

app.registerExtension({
	name: "ipadapter_kit.migration",

	async beforeRegisterNodeDef(nodeType, nodeData) {
		if (nodeData?.deprecated || nodeData?.category === "ipadapter_kit/deprecated") nodeType.skip_list = true;
	},

	async beforeConfigureGraph(graphData, missingNodeTypes) {
		if (!graphData || !Array.isArray(graphData.nodes)) return;
		const info = await getAbout();
		if (!info || !nodeTypes(graphData).some((t) => needsConversion(t, info))) return;
		let answer;
		try {
			const resp = await api.fetchApi(`${BASE}/convert`, {
				method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(graphData),
			});
			answer = await resp.json();
			if (!resp.ok) throw new Error(answer.error || `HTTP ${resp.status}`);
		} catch (error) {
			console.error("IPAdapter Kit: could not convert the IPAdapter Plus nodes of this workflow", error);
			app.extensionManager?.toast?.add?.({ severity: "error", summary: "IPAdapter Kit", detail: String(error) });
			return;
		}
		for (const key of Object.keys(graphData)) delete graphData[key];
		Object.assign(graphData, answer.workflow);
		for (const node of answer.report.nodes) {
			if (!node.new && Array.isArray(missingNodeTypes)) {
				missingNodeTypes.push({ type: node.old, hint: " (IPAdapter Kit has no equivalent yet; see its report)" });
			}
		}
		pending = answer;
	},

	async afterConfigureGraph() {
		if (pending) {
			showReport(pending);
			pending = null;
		}
	},
});
