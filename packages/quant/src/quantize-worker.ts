/** Worker thread of `quantizeJobPool`: runs `runQuantizeJob` on every job it is sent. */
import { serveJobs } from '@q/core';
import { type QuantizeJob, runQuantizeJob } from './stream';

serveJobs((job: QuantizeJob) => runQuantizeJob(job));
