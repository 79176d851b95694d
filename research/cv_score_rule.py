#!/usr/bin/env python3
"""Prototype: choose the image score with more normal images than the calibration split holds, by
grouped cross-validation over the training split; evidence for a report option, not part of the
pipeline. Touches no test image.

The training images' groups (split.groups) are dealt into 5 folds. For each fold a per-position
Gaussian (sample covariance + 0.01 I, as fit) of the other four folds scores the fold's images and
every calibration image, so that both classes of each comparison are scored by the same model; maps
are upsampled and smoothed as score does (bilinear to the input, Gaussian sigma 4, kernel 33). Per
fold, the image AUROC of the mean, top (1%) and max scores is taken over the fold's training normals
and the calibration split; then their mean over folds, and a bootstrap over groups (normal groups and
defective groups drawn apart, the same draw in every fold) of the mean over folds of top - mean and
max - mean. Also the calibration split alone, scored by the model of the whole training split
(padim's calibration AUROCs).

Pooling out-of-fold normals scored by the fold models with calibration defects scored by the model of
all training images would compare scores of two different models: the fold models, fitted on fewer
images, give unseen images larger distances, which lowers the mean score's AUROC more than the top
score's (on the tile job that made top - mean look like 0.145, against 0.032 when each fold's model
scores both classes).

Usage (the magnetic-tile job, layers 2+3 = embedding channels 24..176; its run's extract stage done):
  .venv/bin/python research/cv_score_rule.py runs/magnetic-tile configs/magnetic-tile-groups.csv 24:176
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
rules = ('mean', 'top', 'max')
cal_defect = np.array([row[uid[i]]['label'] != 'MT_Free' for i in cal])
folds = []  # per fold: (its training images, [scores of its images then the calibration images, per rule])
for f in range(5):
    tr = [i for i in train if fold_of[groups[row[uid[i]]['path']]] != f]
    te = [i for i in train if fold_of[groups[row[uid[i]]['path']]] == f]
    folds.append((te, [r.numpy() for r in fit_score(tr, te + cal)]))
    print('fold', f, len(tr), 'fit,', len(te), 'held out', flush=True)
whole = [r.numpy() for r in fit_score(train, cal)]
print('calibration alone (model of all training images): ' + ' '.join(f'{n} {roc_auc_score(cal_defect, whole[r]):.4f}' for r, n in enumerate(rules)))
def fold_aurocs(weight=None):
    out = []
    for te, scores in folds:
        y = np.concatenate([np.zeros(len(te), bool), cal_defect])
        w = None if weight is None else np.array([weight.get(groups[row[uid[i]]['path']], 0) for i in te + cal], float)
        out.append([roc_auc_score(y, scores[r], sample_weight=w) for r in range(3)])
    return np.array(out)
per_fold = fold_aurocs()
for f, a in enumerate(per_fold):
    print(f'fold {f} (its normals + calibration): ' + ' '.join(f'{n} {v:.4f}' for n, v in zip(rules, a)))
print('mean over folds: ' + ' '.join(f'{n} {v:.4f}' for n, v in zip(rules, per_fold.mean(0))))
group_of = lambda i: groups[row[uid[i]]['path']]
normal_groups = sorted({group_of(i) for i in train} | {group_of(i) for i, d in zip(cal, cal_defect) if not d})
defect_groups = sorted({group_of(i) for i, d in zip(cal, cal_defect) if d})
rng = np.random.default_rng(1)
diffs = []
for b in range(500):
    weight = {}
    for pool in (normal_groups, defect_groups):
        for g in rng.choice(pool, len(pool)):
            weight[g] = weight.get(g, 0) + 1
    a = fold_aurocs(weight).mean(0)
    diffs.append(a[1:] - a[0])
low, high = np.percentile(diffs, [2.5, 97.5], axis=0)
for r in (1, 2):
    print(f'{rules[r]} - mean over folds {per_fold.mean(0)[r] - per_fold.mean(0)[0]:+.4f}, grouped bootstrap 95%: {low[r - 1]:+.4f} .. {high[r - 1]:+.4f}')
