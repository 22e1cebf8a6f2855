"""One-off: re-sample (same seeds) only the training problems that had a correct sample, with the
engine that records the sampled stop token, and write data2.jsonl."""
import json
from pathlib import Path
from autodeco import AutoDecoModelForCausalLM
from autodeco.evaluation.runner import EvalSettings
from autodeco.models import load_tokenizer
from autodeco.training import self_data

work = Path("/root/recipe-work/gemma-3-270m")
old = [json.loads(l) for l in open(work / "data.jsonl")]
solved = {(r["task"], r["problem"]) for r in old}
real_training_task = self_data.training_task

def training_task(spec):
    task = real_training_task(spec)
    everything = task.problems
    task.problems = lambda: [p for p in everything() if (task.name, p.id) in solved]
    return task

self_data.training_task = training_task
model = AutoDecoModelForCausalLM.from_base("gemma-3-270m")
tokenizer = load_tokenizer("gemma-3-270m")
settings = EvalSettings(model="gemma-3-270m", heads=None, heads_sha256=None, chat=False, max_new_tokens=16, seed=0, dtype=str(model.dtype))
specs = ["reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1,size=6000", "reasoning_gym:letter_counting,size=3000"]
ys = self_data.sample_training_data(model, tokenizer, settings, specs, work / "data2.jsonl", problems=1000, samples=6, batch_size=16, work=work / "samples2")
print(ys)
