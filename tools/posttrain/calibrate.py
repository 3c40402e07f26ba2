"""Closed-form compensation Wc (docs/uniattn.md §6), for standard inputs unified here: reuse layers are solved one at a
time, in order, each against the unified model with the earlier compensations active:
    W = argmin ||X W - (O1 - O2)||^2 + ridge, X = x̃ of the reuse layer, O1 = the original model's post-attention
    residual, O2 = the unified model's (without this layer's compensation); v2_proj.weight = W^T.
Statistics are accumulated in float64; the ridge is `ridge` times the mean diagonal of X^T X, as
uniattn-convert unify does."""
import torch


@torch.no_grad()
def closed_form_wc(teacher, student, calib_tokens, ridge=1e-3, batch=8, log=print):
    """Sets student's v2_proj weights in place; returns {layer: fraction of ||O1 - O2|| left unexplained}."""
    reuse = student.config.reuse_layers()
    for r in reuse:
        student.model.layers[r].v2_proj.weight.zero_()
    unexplained = {}
    for r in reuse:
        d = student.config.hidden_size
        xtx = torch.zeros(d, d, dtype=torch.float64, device=calib_tokens.device)
        xty = torch.zeros(d, d, dtype=torch.float64, device=calib_tokens.device)
        chunks = []
        for s in range(0, calib_tokens.shape[0], batch):
            tokens = calib_tokens[s:s + batch]
            t1, t2 = {}, {}
            teacher(tokens, trace=t1, stop_after=r)
            student(tokens, trace=t2, stop_after=r)
            x = t2["x_norm"][r].reshape(-1, d).double()
            y = (t1["post_attn"][r] - t2["attn_out"][r]).reshape(-1, d).double()
            xtx += x.T @ x
            xty += x.T @ y
            chunks.append((x, y))
        lam = ridge * xtx.diagonal().mean()
        w = torch.linalg.solve(xtx + lam * torch.eye(d, dtype=torch.float64, device=xtx.device), xty)
        student.model.layers[r].v2_proj.weight.copy_(w.T.to(student.model.layers[r].v2_proj.weight.dtype))
        num = sum(float(((x @ w - y) ** 2).sum()) for x, y in chunks)
        den = sum(float((y ** 2).sum()) for _, y in chunks)
        unexplained[r] = (num / max(den, 1e-300)) ** 0.5
        log(f"closed-form Wc: layer {r}: unexplained {unexplained[r]:.3f} of ||O1 - O2||")
    return unexplained
