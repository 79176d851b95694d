#!/usr/bin/env python3
"""Prototype: choose the image score with more normal images than the calibration split holds, by
grouped cross-validation over the training split; evidence for a planned report option, not part of
the pipeline. Touches no test image.

The training images' groups (split.groups) are dealt into 5 folds; for each fold a per-position
Gaussian (sample covariance + 0.01 I, as fit) of the other folds scores the fold's images, so every
training image gets an out-of-fold map (upsampled and smoothed as score does: bilinear to the input,
Gaussian sigma 4, kernel 33). The model of the whole training split scores the calibration images.
Prints the image AUROC of the mean, top (1%) and max scores on the calibration split alone and with
the out-of-fold training normals added, and a bootstrap over groups of top - mean.

Usage (the magnetic-tile job, layers 2+3 = embedding channels 24..176; its run's extract stage done):
  .venv/bin/python scripts/cv_score_rule.py runs/magnetic-tile configs/magnetic-tile-groups.csv 24:176
"""
import csv
import sys

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

torch.set_num_threads(2)
run, groups_csv, channels = sys.argv[1], sys.argv[2], sys.argv[3]
groups = {r['path']: r['group'] for r in csv.DictReader(open(groups_csv))}
man = list(csv.DictReader(open(f'{run}/split/manifest.csv')))
first, end = (int(v) for v in channels.split(':'))
cols = ['image', 'y', 'x'] + [f'c{i:04d}' for i in range(first, end)]
t = pq.read_table(f'{run}/extract/embeddings-00000-of-00001.parquet', columns=cols)
ids, ys, xs = (t.column(c).to_numpy() for c in ('image', 'y', 'x'))
keep = np.isin(ids, [int(r['image']) for r in man if r['split'] in ('train', 'calibration')])
H, W, k = int(ys.max()) + 1, int(xs.max()) + 1, end - first
vals = np.stack([t.column(3 + i).to_numpy()[keep] for i in range(k)], 1).astype(np.float32)
ids, ys, xs = ids[keep], ys[keep], xs[keep]
order = np.lexsort((xs, ys, ids)); vals, ids = vals[order], ids[order]
uid = np.unique(ids)
E = torch.from_numpy(vals).view(len(uid), H * W, k)
row = {int(r['image']): r for r in man}
train = [i for i, u in enumerate(uid) if row[u]['split'] == 'train']
cal = [i for i, u in enumerate(uid) if row[u]['split'] == 'calibration']
tg = sorted({groups[row[uid[i]]['path']] for i in train})
rng = np.random.default_rng(0); rng.shuffle(tg)
fold_of = {g: n % 5 for n, g in enumerate(tg)}
size, sigma = 33, 4.0
taps = torch.arange(size) - size // 2
kern = torch.exp(-taps.float() ** 2 / (2 * sigma ** 2)); kern /= kern.sum()
def maps(d):
    m = F.interpolate(d.view(-1, 1, H, W), size=(4 * H, 4 * W), mode='bilinear', align_corners=False)
    m = F.conv2d(F.pad(m, (16, 16, 0, 0), mode='reflect'), kern.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, 16, 16), mode='reflect'), kern.view(1, 1, -1, 1))
    f = m.flatten(1); top = f.topk(int(np.ceil(0.01 * f.shape[1])), 1).values.mean(1)
    return f.mean(1), top, f.max(1).values
def fit_score(tr, te):
    X = E[tr].double()
    mu = X.mean(0)
    Xc = (X - mu).transpose(0, 1)
    C = torch.bmm(Xc.transpose(1, 2), Xc) / (len(tr) - 1) + 0.01 * torch.eye(k, dtype=torch.float64)
    C = C.contiguous(); P = torch.cholesky_inverse(torch.linalg.cholesky(C))
    out = []
    for s in range(0, len(te), 16):
        D = E[te[s:s + 16]].double() - mu
        Y = torch.bmm(D.transpose(0, 1), P).transpose(0, 1)
        out.append((Y * D).sum(-1).clamp_min(0).sqrt().float())
    return maps(torch.cat(out))
res = {}  # image index -> (mean, top, max)
for f in range(5):
    tr = [i for i in train if fold_of[groups[row[uid[i]]['path']]] != f]
    te = [i for i in train if fold_of[groups[row[uid[i]]['path']]] == f]
    m, tp, mx = fit_score(tr, te)
    for j, i in enumerate(te): res[i] = (m[j].item(), tp[j].item(), mx[j].item())
    print('fold', f, len(tr), len(te), flush=True)
m, tp, mx = fit_score(train, cal)
calres = {i: (m[j].item(), tp[j].item(), mx[j].item()) for j, i in enumerate(cal)}
from sklearn.metrics import roc_auc_score
def auc(items, s):
    y = [row[uid[i]]['label'] != 'MT_Free' for i, _ in items]; return roc_auc_score(y, [v[s] for _, v in items])
calitems = list(calres.items())
cv_items = [(i, v) for i, v in res.items()] + [(i, v) for i, v in calitems if row[uid[i]]['label'] != 'MT_Free'] 
for name, items in [('calibration only', calitems), ('cv normals (train folds) + calibration defects', cv_items), ('both', cv_items + [(i, v) for i, v in calitems if row[uid[i]]['label'] == 'MT_Free'])]:
    print(name, 'mean %.4f top %.4f max %.4f' % (auc(items, 0), auc(items, 1), auc(items, 2)))
# grouped bootstrap of top - mean on the 'both' set
items = cv_items + [(i, v) for i, v in calitems if row[uid[i]]['label'] == 'MT_Free']
byg = {}
for i, v in items: byg.setdefault(groups[row[uid[i]]['path']], []).append((i, v))
gs = list(byg); diffs = []
rng = np.random.default_rng(1)
for b in range(500):
    pick = [x for g in rng.choice(gs, len(gs)) for x in byg[g]]
    try: diffs.append(auc(pick, 1) - auc(pick, 0))
    except ValueError: pass
print('top - mean, grouped bootstrap 95%%: %.4f .. %.4f' % tuple(np.percentile(diffs, [2.5, 97.5])))
