// `quench convert --help`: the options' reference as the README's CLI section states it. The
// scheme names and default ignores are read from their tables, so the help follows them.
#include "cli/convert_help.h"

#include <string>

#include "plan/planner.h"
#include "quench/scheme.h"

namespace quench::cli {

std::string ConvertHelp() {
  std::string s =
      "usage: quench convert SRC DST (--scheme NAME | --recipe FILE) [options]\n"
      "\n"
      "Reads the checkpoint folder SRC (one or more .safetensors shards, with or without an\n"
      "index; BF16, F16 or F32 weights) and writes a compressed-tensors checkpoint to DST:\n"
      "quantized shards under the same names, the index, config.json with its\n"
      "quantization_config, and every other file copied unchanged. SRC is never written.\n"
      "SRC may be a Hugging Face model ID (ORG/NAME) that is not a path here: the model's\n"
      "snapshot in the local Hugging Face cache (quench downloads nothing).\n"
      "\n"
      "A tensor is quantized when it is a 2-D `<module>.weight`, the module name does not end\n"
      "in \"norm\", it matches --targets and matches no --ignore entry (compressed-tensors'\n"
      "rule), and, unless --no-default-ignore, it is not one of the modules vLLM loads\n"
      "unquantized (output heads, embeddings, MoE routers, convolutions, MTP and indexer\n"
      "projections) or a multimodal model's vision or audio encoder or projector.\n"
      "\n"
      "options:\n"
      "  --scheme NAME         quantization scheme (required; `quench schemes` describes them):\n"
      "                       ";
  int col = 23;
  // The data-free schemes first, then those whose activation scales need --stats.
  const auto list = [&](bool calibrated) {
    for (const SchemeInfo& sc : SchemeTable()) {
      if (sc.needs_calibration.empty() == calibrated) continue;
      if (col + sc.name.size() + 1 > 92) {
        s += "\n                       ";
        col = 23;
      }
      s += " " + std::string(sc.name);
      col += static_cast<int>(sc.name.size()) + 1;
    }
  };
  list(false);
  s += "\n                        with static activation scales from --stats:";
  col = 68;
  list(true);
  s += "\n"
       "                        none: with --prune or --prune-experts, prune only; BF16:\n"
       "                        decode a quantized source (FP8, AWQ, NVFP4, compressed-tensors)\n"
       "  --recipe FILE         several schemes in one run, instead of --scheme/--targets:\n"
       "                        a compressed-tensors QuantizationConfig (.json, also a\n"
       "                        config.json) or an llm-compressor YAML recipe with a\n"
       "                        QuantizationModifier (scheme, targets, ignore, config_groups)\n"
       "  --targets ENTRY       module to quantize (repeatable); exact name or re:REGEX\n"
       "                        (Python re.match: anchored at the start). Default: Linear (all)\n"
       "  --ignore ENTRY        module to leave unquantized (repeatable), same syntax; written\n"
       "                        verbatim to quantization_config.ignore\n"
       "  --no-default-ignore   quantize exactly what llm-compressor's model_free_ptq would;\n"
       "                        without it these are also left alone (one per line):";
  for (const DefaultIgnore& d : DefaultIgnores()) {
    s += "\n                          " + std::string(d.pattern);
  }
  s += "\n"
       "  --group-size N        integer schemes: inputs per scale (a multiple of 8), or -1 for\n"
       "                        one scale per output channel; default: the preset's (128)\n"
       "  --symmetric, --asymmetric\n"
       "                        integer schemes: without or with zero points; default: preset's\n"
       "  --prune SPEC          magnitude pruning before quantizing: unstructured:F zeroes the\n"
       "                        fraction F (0 <= F < 1) of each targeted weight with the\n"
       "                        smallest magnitudes; N:M keeps the N largest of every M\n"
       "                        consecutive inputs (M <= 16). With --scheme none, prune only\n"
       "  --prune-granularity G row (default: per output row) or tensor (unstructured only)\n"
       "  --prune-metric M      magnitude (default) or wanda: |W| x sqrt(E[x^2]) of the input\n"
       "                        channel from --stats, compared within each row, as\n"
       "                        llm-compressor's Wanda\n"
       "  --prune-experts F     remove the fraction F (0 <= F <= 1) of routed experts from\n"
       "                        every MoE layer (max(1, E - round(F*E)) kept), scored by\n"
       "                        --expert-metric; survivors renumbered, routers sliced,\n"
       "                        config.json's expert count updated. Composes with any\n"
       "                        --scheme (--scheme none: prune experts only)\n"
       "  --expert-metric M     magnitude (default): L1 norm of the expert's router row, as\n"
       "                        compressed-tensors' MagnitudeExpertPruner; reap: REAP saliency\n"
       "                        from --stats (collect-stats --reap), as llm-compressor's\n"
       "                        REAPPruningModifier (int(F*E) dropped, 0 < F < 1)\n"
       "  --stats STATS         activation statistics (a folder scripts/collect-stats wrote)\n"
       "  --static-activations  static per-tensor activation scales from --stats instead of\n"
       "                        dynamic per-token ones (W8A8, INT8, W4A8, FP8_DYNAMIC); FP8\n"
       "                        and NVFP4 always have them (input_scale, input_global_scale)\n"
       "  --asymmetric-activations\n"
       "                        static int8 activations with a zero point (input_zero_point)\n"
       "  --kv-cache fp8        FP8 KV cache: k_scale / v_scale per attention layer from the\n"
       "                        key/value ranges in --stats (collect-stats --kv-cache)\n"
       "  --algorithm A         rtn (default: round to nearest) or gptq: GPTQ from the full\n"
       "                        Hessians in --stats, as llm-compressor's GPTQModifier (integer,\n"
       "                        FP8, NVFP4, MX schemes); weights without a Hessian are rounded\n"
       "                        to nearest and --dry-run and --report say why; or sparsegpt (with\n"
       "                        --prune N:M or unstructured:F): SparseGPT's mask and updates\n"
       "                        from the same Hessians instead of magnitude pruning; or\n"
       "                        smoothquant: llm-compressor's SmoothQuant from the min/max in\n"
       "                        --stats (norm weights rewritten, balance columns scaled), then\n"
       "                        RTN; or awq: llm-compressor's AWQ grid search from sum_abs and\n"
       "                        the Hessian (else sum_x2) in --stats, then RTN (integer schemes).\n"
       "                        A comma list composes them, run in the pipeline's order\n"
       "                        (smoothing, pruning, quantization) whatever the order given:\n"
       "                        e.g. smoothquant,gptq  awq,gptq  sparsegpt,gptq  awq,sparsegpt;\n"
       "                        GPTQ then sees the smoothed weights and Hessian, and keeps\n"
       "                        pruned weights (SparseGPT, magnitude or Wanda) at zero\n"
       "  --smoothing-strength A  SmoothQuant: alpha in [0, 1] (default 0.5)\n"
       "  --awq-duo-scaling D   AWQ: true (default), false or both, as AWQModifier.duo_scaling\n"
       "  --awq-n-grid N        AWQ: grid points (default 20)\n"
       "  --awq-search S        AWQ: screened (default: grid points dropped on estimates from\n"
       "                        nested row samples, the survivors' exact losses decide) or\n"
       "                        exact (every loss that can decide, certified)\n"
       "  --observer O          minmax (default) or imatrix_mse: each group's clipping range\n"
       "                        searched to minimise the error weighted by E[x^2] from --stats,\n"
       "                        as llm-compressor's imatrix_mse observer (integer, FP4 schemes)\n"
       "  --observer-arg K=V    imatrix_mse's observer_kwargs, repeatable: grid (20),\n"
       "                        maxshrink (0.95), norm (3.0), patience (5), expand (1.0),\n"
       "                        strict (false); written to config.json as llm-compressor does\n"
       "  --gptq-block-size N   GPTQ, SparseGPT: columns per lazy-update block (default 128)\n"
       "  --dampening F         GPTQ, SparseGPT: F x mean(diag H) added to H's diagonal\n"
       "                        (default 0.01)\n"
       "  --actorder A          GPTQ: static (= weight; the default) quantizes columns in\n"
       "                        decreasing diag(H) order, none in their order\n"
       "  --memory-limit SIZE   peak memory budget (K, M, G, T; powers of 1024); default 2G,\n"
       "                        or 3/4 of the cgroup's memory limit when that is smaller\n"
       "  --threads N           worker threads; default: a core each (those the process may\n"
    "                        use: its CPU affinity, its cgroup's CPU quota)\n"
       "  --no-direct-io        write the output through the page cache; by default weight\n"
       "                        shards are written with O_DIRECT where the file system allows\n"
       "                        it (faster, and the output does not evict the input's cache)\n"
       "  --dry-run             plan only: print every tensor's action, scheme and bytes, every\n"
       "                        output shard, totals, warnings and errors; read no weight and\n"
       "                        write nothing (except --report); where a run would fail, exit\n"
       "                        with its first error's code (2 usage or memory budget, 3 input,\n"
       "                        4 I/O)\n"
       "  --report FILE         write a JSON account: recipe as resolved, per tensor action,\n"
       "                        scheme, shapes and bytes, shards, totals, time, peak memory\n"
       "  --resume              finish an interrupted run in DST: output shards that were\n"
       "                        completed and synced, and match the source and recipe, are\n"
       "                        kept; everything else is redone\n"
       "  --overwrite           allow a DST that exists and is not empty (files of the same\n"
       "                        name are replaced; other files are left as they are; a\n"
       "                        finished folder's config.json goes first, so DST does not\n"
       "                        look finished until the run is). One run writes a DST at a\n"
       "                        time: another (or workers) writing it is exit 2\n"
       "  --worker I/N          convert worker I's share (0 <= I < N) of the output shards\n"
       "                        into a DST shared by N workers; the last to finish publishes\n"
       "                        it (or `quench finalize DST`). Without it, taken from the\n"
       "                        launcher: Slurm job arrays (SLURM_ARRAY_TASK_*), srun\n"
       "                        (SLURM_PROCID), Open MPI (OMPI_COMM_WORLD_*), MPICH/Cray\n"
       "                        (PMI_RANK/SIZE), torchrun (RANK/WORLD_SIZE), Kubernetes\n"
       "                        indexed jobs (JOB_COMPLETION_INDEX with --workers N).\n"
       "                        A rerun resumes the worker's part. {worker} in --report's\n"
       "                        path becomes I\n"
       "  --workers N           the number of workers (Kubernetes: spec.completions)\n"
       "  --no-finalize         a worker never publishes DST: `quench finalize DST` does\n"
       "  -q, --quiet           no progress and no notes: errors, and the warning naming a\n"
       "                        lock or marker a finished run could not remove\n";
  return s;
}

}  // namespace quench::cli
