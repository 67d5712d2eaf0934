"""Driver of scripts/check-vllm: one vLLM engine per checkpoint, each in its own process
(vLLM's CPU engine does not release its memory), embeddings compared by cosine similarity."""
import json
import multiprocessing as mp
import os
import re
import sys

# The sentences the consumer suite embeds (tests/python/sentences.txt), one per line.
SENTENCES = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "tests", "python", "sentences.txt")).read().splitlines()


def engine_child(run, folder, q, log):
    """In the spawned process: `run(folder)`'s result, or vLLM's own message, put on `q`."""
    # The engine's processes inherit these descriptors: its root-cause messages land in `log`.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        q.put(("ok", run(folder)))
    except BaseException as e:  # vLLM's own message is the result
        msg = str(e).strip().splitlines()
        q.put(("error", f"{type(e).__name__}: {msg[-1] if msg else ''}"))


def in_engine_process(run, folder, timeout=900):
    """("ok", run(folder)) or ("error", vLLM's message: root_cause of FOLDER.vllm.log), with
    `run` (a module-level function that starts a vLLM engine on the folder, returns picklable
    results and shuts the engine down, else it keeps the process alive) in a process of its
    own: vLLM's CPU engine does not release its memory."""
    log = folder.rstrip("/") + ".vllm.log"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=engine_child, args=(run, folder, q, log))
    p.start()
    try:
        result = q.get(timeout=timeout)
    except Exception:
        result = ("error", f"no result from the engine process (exit code {p.exitcode})")
    p.join(60)
    if p.is_alive():
        p.terminate()
        p.join()
    if result[0] == "error":
        result = ("error", root_cause(log) or result[1])
    return result


def embed_run(folder):
    from vllm import LLM
    llm = LLM(model=folder, runner="pooling", enforce_eager=True, max_model_len=128)
    out = [o.outputs.embedding for o in llm.embed(SENTENCES)]
    llm.llm_engine.engine_core.shutdown()
    return out


def root_cause(log):
    """vLLM's own message: the last exception line its workers logged, with the lines after it
    (a 'Reasons:' list), without the generic 'Engine core initialization failed'; or, where a
    worker died by a C++ exception (std::terminate: the engine then reports only 'cancelled'),
    that exception's type and message."""
    text = open(log, errors="replace").read()
    died = re.search(r"terminate called after throwing an instance of '([^']+)'\s*\n\s*what\(\):"
                     r"\s+(.*)", text)
    if died:
        return f"{died.group(1)} (worker aborted): {died.group(2).strip()}"
    lines = [re.sub(r"^\(\S+ pid=\d+\) ERROR \S+ \S+ \[[^]]*\] ?", "", l.rstrip())
             for l in open(log, errors="replace") if " ERROR " in l]
    hits = [i for i, l in enumerate(lines)
            if re.match(r"\w+(Error|Exception): ", l) and "initialization failed" not in l]
    if not hits:
        return None
    i = hits[-1]
    return " ".join(x.strip() for x in lines[i:i + 4] if x.strip() and "Traceback" not in x
                    and "EngineCore failed" not in x and not x.strip().startswith("File "))


def vllm_embed(folder):
    return in_engine_process(embed_run, folder)


def transformers_embed(folder):
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).tolist()


def min_cos(a, b):
    import torch
    a, b = torch.tensor(a), torch.tensor(b)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()


def main():
    src, work, schemes = sys.argv[1], sys.argv[2], sys.argv[3:]
    ref_hf = transformers_embed(src)
    status, ref_vllm = vllm_embed(src)
    assert status == "ok", ref_vllm
    rows = [("unquantized", min_cos(ref_vllm, ref_vllm), min_cos(ref_vllm, ref_hf), "")]
    for s in schemes:
        status, emb = vllm_embed(os.path.join(work, f"minilm-{s}"))
        if status == "ok":
            rows.append((s, min_cos(emb, ref_vllm), min_cos(emb, ref_hf), ""))
        else:
            rows.append((s, None, None, emb))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| scheme | min cos vs unquantized (vLLM) | min cos vs transformers (unquantized) | vLLM CPU message |")
    print("|---|---|---|---|")
    for name, a, b, msg in rows:
        f = lambda x: "-" if x is None else f"{x:.6f}"
        print(f"| {name} | {f(a)} | {f(b)} | {msg} |")


if __name__ == "__main__":
    main()
