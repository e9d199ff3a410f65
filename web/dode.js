// D-ODE in ComfyUI's frontend: the only thing the V3 schema of ComfyUI 0.3.75 cannot say.
//
// The preset "Distill λ (D-ODE, CFG)" (DODEDistill) starts its fit seed at "fixed", so that queueing again reuses
// the λ file instead of changing the seed each time. The schema can only ask for a "control after generate" widget
// (frontend 1.32.9 always starts it at "randomize"). Only new nodes: a loaded workflow keeps the value it saved.
import { app } from "../../scripts/app.js";

app.registerExtension({
    name: "dode.PresetSeedFixed",
    nodeCreated(node) {
        if (node?.comfyClass !== "DODEDistill") return;
        const control = (node.widgets || []).find((w) => w.name === "control_after_generate");
        if (control) control.value = "fixed";
    },
});
